"""How many attempts a job has left: the one rule every retry-or-dead decision uses.

A job makes at most ``max_retries + 1`` attempts. The worker (a failed or timed-out attempt, a
release at shutdown), ``outbox.testing.drain`` and ``TaskContext.is_last_attempt`` ask this
function. The SQL function ``outbox.reap`` makes the same decision for an expired lease in SQL
(``IF j.attempts >= j.max_retries + 1 THEN`` dead, else retry: migrations are history, so its body
is not rewritten to call anything); tests/worker/test_attempts.py checks the two agree.
"""

from __future__ import annotations


def attempts_left(attempt: int, max_retries: int) -> int:
    """Attempts still allowed after attempt number ``attempt`` (1-based) of a job with ``max_retries``.

    0 means ``attempt`` was the last: a failure now dead-letters the job (``outbox.reap`` decides
    ``dead`` for an expired lease exactly when this is 0). Never negative.
    """
    return max(max_retries + 1 - attempt, 0)
