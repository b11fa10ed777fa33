"""Tierbox's exceptions, one tree.

::

    TierboxError
    ├── ConfigError            a setting or the topology is wrong (names the setting)
    ├── EnqueueError           nothing was written; the caller's transaction is usable
    │   ├── UnknownTaskError       field "task"
    │   ├── UnknownTierError       field "tier"
    │   ├── PayloadEncodeError     field "args" / "kwargs" / "headers"
    │   ├── PayloadTooLargeError   field "args"
    │   ├── InvalidScheduleError   field "delay" / "run_at" / "expires"
    │   ├── InvalidOptionError     field "priority" / "idempotency_key" / "max_retries" / an unknown option
    │   └── WebhookError           field "webhook.url" / "webhook.secret"
    ├── RegistryError          a task definition is wrong (duplicate name, bad policy)
    ├── RedriveError           a redrive or discard was refused (already redriven, ...)
    ├── TopologyMismatchError  a queue exists with other arguments than the topology says
    ├── SchemaOutdatedError    the database's outbox schema is older than the code: run `tierbox migrate`
    ├── FlowStateUnavailableError  Redis (flow control's shared state) did not answer a report
    ├── ProgressError          field "fraction" / "message" / "data" of a `ctx.progress` call
    └── CapabilityError        a job capability is malformed, tampered with, expired or for another job

    Reject                     raised by a handler: fail now, never retry
                               (alias NonRetryable)

Every error with a ``field`` names the argument or setting at fault, so a
message can be shown to a user as it is. ``WebhookError`` lives in ``outbox.webhooks``,
``ProgressError`` and ``CapabilityError`` in ``outbox._progress`` (next to the code that raises
them); all are exported from ``outbox``.
"""

from __future__ import annotations


class TierboxError(Exception):
    """Base class of every error Tierbox raises on purpose."""


class ConfigError(TierboxError, ValueError):
    """A setting, URL or topology entry is invalid. ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class EnqueueError(TierboxError, ValueError):
    """Enqueue refused its input before writing anything. ``field`` names the argument."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class UnknownTaskError(EnqueueError):
    """The task is neither a registered task object nor a registered name."""


class UnknownTierError(EnqueueError):
    """The tier is not in the topology."""


class PayloadEncodeError(EnqueueError):
    """args, kwargs or headers cannot be encoded as JSON by msgspec."""


class PayloadTooLargeError(EnqueueError):
    """The encoded payload is above ``Settings.max_payload_bytes``."""


class InvalidScheduleError(EnqueueError):
    """delay, run_at or expires are contradictory or malformed."""


class InvalidOptionError(EnqueueError):
    """priority, idempotency_key or max_retries is malformed, or an option has no such name."""


class RegistryError(TierboxError):
    """A task definition is invalid (duplicate name, unknown tier, bad policy)."""


class RedriveError(TierboxError):
    """A redrive or discard was refused; the message says why.

    ``not_found`` is True when no dead letter exists for the job (HTTP 404),
    False when it exists but was already redriven or discarded (HTTP 409).
    """

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        self.not_found = not_found
        super().__init__(message)


class TopologyMismatchError(TierboxError):
    """RabbitMQ holds a queue or exchange declared with other arguments."""


class SchemaOutdatedError(TierboxError):
    """The database's ``outbox`` schema is older than this code needs: run ``tierbox migrate`` first."""


class FlowStateUnavailableError(TierboxError):
    """Redis, which holds flow control's shared state, did not answer a request for a report.

    Admission fails open when Redis is down (jobs keep running); a report such as the
    breakers' states cannot, since an empty answer would read as "no breaker tripped".
    """


class Reject(Exception):  # noqa: N818 - the name is the verb handlers raise
    """Raise from a handler to fail the job now, with no retry: it is dead-lettered.

    ``fingerprint``: the failure group to file it under (docs/triage.md), instead of the one
    computed from its type, message and stack; e.g. ``Reject("bad VAT id", fingerprint="vat-invalid")``.
    """

    def __init__(self, *args: object, fingerprint: str | None = None) -> None:
        super().__init__(*args)
        self.fingerprint = fingerprint
        if fingerprint:
            # Read by outbox._fingerprint (the attribute every explicit fingerprint travels on).
            self.__tierbox_fingerprint__ = fingerprint


NonRetryable = Reject
