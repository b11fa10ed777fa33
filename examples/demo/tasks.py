"""Tasks of ``tierbox demo``: one per tier, plus one that retries and one that needs a redrive."""

from __future__ import annotations

from sqlalchemy import text

import outbox
from outbox import Tier

FIX_TABLE = "public.tierbox_demo_fixed"


@outbox.task(tier=Tier.CRITICAL, name="demo.send_otp")
def send_otp(phone: str) -> None:
    """Send a one-time password (expires in 60 s, so it is CRITICAL)."""


@outbox.task(tier=Tier.HIGH, name="demo.payment_webhook")
def payment_webhook(event_id: str) -> None:
    """Apply a payment provider's webhook."""


@outbox.task(tier=Tier.NORMAL, name="demo.generate_invoice")
def generate_invoice(order_id: int) -> None:
    """Render an invoice."""


@outbox.task(tier=Tier.LOW, name="demo.sync_calendar")
def sync_calendar(user_id: int) -> None:
    """Sync a calendar."""


@outbox.task(tier=Tier.BULK, name="demo.export_contacts")
async def export_contacts(rows: int) -> None:
    """Export contacts to CSV (async handler)."""


@outbox.task(tier=Tier.CALLS, name="demo.call_summary", priority=5)
def call_summary(call_id: int) -> None:
    """Summarise a finished call."""


@outbox.task(tier=Tier.HIGH, name="demo.flaky_provider", max_retries=3, retry_backoff_s=0.2)
def flaky_provider(ctx: outbox.TaskContext, order_id: int) -> None:
    """Fails twice (a provider blip), then succeeds: shows durable retries."""
    if ctx.attempt <= 2:
        raise ConnectionError(f"provider timed out (attempt {ctx.attempt})")


@outbox.task(tier=Tier.NORMAL, name="demo.needs_fix", max_retries=1, retry_backoff_s=0.2)
def needs_fix(ctx: outbox.TaskContext, order_id: int) -> None:
    """Fails until an operator fixes the cause: shows a dead letter and a redrive."""
    fixed = ctx.session.execute(text(f"SELECT count(*) FROM {FIX_TABLE}")).scalar()
    if not fixed:
        raise RuntimeError("tax service rejected the request: missing VAT number")
