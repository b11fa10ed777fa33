"""The hotel platform's tasks: at least two per tier, modelled on the story's table.

The external providers (e-mail, Stripe, Google Calendar, Fattura in Cloud, OpenAI, S3) are
faked by short sleeps: what the example measures is the queueing, not the providers. The one
handler that touches the database, the Stripe webhook, reads ``BOOKINGS``: a webhook for a booking
the platform has not recorded yet fails (the race the story's dead-letter queue catches), and
succeeds once the booking exists and the dead letter is redriven.
"""

from __future__ import annotations

import time

from sqlalchemy import text

import outbox
from outbox import Tier

#: The platform's bookings table (created by the runner in the example's database).
BOOKINGS = "public.hotel_example_bookings"


def _provider(ms: float) -> None:
    """A provider call that takes ``ms`` milliseconds."""
    time.sleep(ms / 1000)


# CRITICAL: a user is waiting or money moves.
@outbox.task(tier=Tier.CRITICAL, name="hotel.send_otp_email", expires=60)
def send_otp_email(email: str) -> None:
    """Send a one-time password; it expires in 60 s, so does the job."""
    _provider(2)


@outbox.task(tier=Tier.CRITICAL, name="hotel.process_stripe_webhook", max_retries=1, retry_backoff_s=0.2)
def process_stripe_webhook(ctx: outbox.TaskContext, event_id: str, booking_id: int) -> None:
    """Apply a Stripe event to its booking; an unknown booking is a failure worth a dead letter."""
    found = ctx.session.execute(text(f"SELECT 1 FROM {BOOKINGS} WHERE id = :id"), {"id": booking_id}).scalar()
    if not found:
        raise LookupError(f"stripe event {event_id}: booking {booking_id} is not recorded")


# HIGH: the user will notice.
@outbox.task(tier=Tier.HIGH, name="hotel.send_payment_success_email")
def send_payment_success_email(booking_id: int) -> None:
    """E-mail the payment receipt."""
    _provider(5)


@outbox.task(tier=Tier.HIGH, name="hotel.create_calendar_event")
def create_calendar_event(booking_id: int) -> None:
    """Create the guest's Google Calendar event."""
    _provider(5)


# NORMAL: background work somebody submitted.
@outbox.task(tier=Tier.NORMAL, name="hotel.sync_calendar")
def sync_calendar(property_id: int) -> None:
    """Reconcile a property's calendars (raised to HIGH for a high-demand week by a tier override)."""
    _provider(5)


@outbox.task(tier=Tier.NORMAL, name="hotel.create_invoice")
def create_invoice(booking_id: int) -> None:
    """Issue the e-invoice through Fattura in Cloud."""
    _provider(10)


# LOW: maintenance, two of them periodic (expires is mandatory on a schedule).
@outbox.task(tier=Tier.LOW, name="hotel.generate_contact_summary")
def generate_contact_summary(contact_id: int) -> None:
    """Summarise a contact with the language model."""
    _provider(10)


@outbox.task(tier=Tier.LOW, name="hotel.cleanup_pending_subscriptions",
             schedule=outbox.cron("0 2 * * *", tz="Europe/Rome"), expires=3600)
def cleanup_pending_subscriptions() -> None:
    """Nightly: drop subscriptions never paid."""


@outbox.task(tier=Tier.LOW, name="hotel.renew_calendar_channels",
             schedule=outbox.cron("0 3 * * *", tz="Europe/Rome"), expires=3600)
def renew_calendar_channels() -> None:
    """Daily: renew the Google Calendar push channels."""


@outbox.task(tier=Tier.LOW, name="hotel.health_check", schedule=outbox.cron("*/2 * * * * *"), expires=3)
def health_check() -> None:
    """The story's beat health check (every 5 min there, every 2 s here so a short run sees it fire)."""


# BULK: heavy lifting, best effort; the e-mail campaign is rate limited cluster-wide.
@outbox.task(tier=Tier.BULK, name="hotel.import_contact")
def import_contact(import_id: int, row: int) -> None:
    """Import (and enrich) one row of a contact CSV."""
    _provider(1)


#: Starts per second the e-mail provider accepts for campaigns.
BULK_EMAIL_RATE = 20


@outbox.task(tier=Tier.BULK, name="hotel.send_bulk_email", rate_limit=f"{BULK_EMAIL_RATE}/s")
def send_bulk_email(campaign_id: int, contact_id: int) -> None:
    """One e-mail of a marketing campaign (the provider caps the rate)."""
    _provider(1)


# CALLS: the nine post-processing tasks of a finished call, in their own lane. Priorities inside the
# lane: the recording download first (the provider deletes it), cosmetic summaries last.
CALL_TASKS: list[tuple[str, int]] = [
    ("hotel.call.download_recording", 9),
    ("hotel.call.record_usage", 8),
    ("hotel.call.bill_operator", 8),
    ("hotel.call.evaluate_criteria", 6),
    ("hotel.call.score_langfuse", 5),
    ("hotel.call.extract_booking", 5),
    ("hotel.call.update_contact", 4),
    ("hotel.call.generate_summary", 3),
    ("hotel.call.archive_recording", 2),
]


def _register_call_task(name: str, priority: int) -> outbox.Task:
    def handler(call_id: int) -> None:
        _provider(20)  # a language-model or storage call

    handler.__doc__ = f"Post-process a finished call: {name.rsplit('.', 1)[1].replace('_', ' ')}."
    task: outbox.Task = outbox.task(handler, tier=Tier.CALLS, name=name, priority=priority)
    return task


for _name, _priority in CALL_TASKS:
    _register_call_task(_name, _priority)
