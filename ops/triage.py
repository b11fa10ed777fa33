"""Dead-letter triage: each failure group gets a cause and a suggested action, with the evidence shown.

A failure group is every failure with one fingerprint (``outbox._fingerprint``; the rows live in
``outbox.failure_groups``). :func:`groups` reads them and runs the rules of :func:`rules` on each:
the application's own rules first (:func:`register_rule`, in registration order), then
:data:`BUILTIN_RULES` in order; the first rule that answers decides. The rules are plain functions
of the group and its evidence, with no clock and no randomness: the same rows always get the same
cause. docs/triage.md lists them.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from outbox._sql import run, run_async
from tierbox.ops import queries


class Group(msgspec.Struct, frozen=True, kw_only=True):
    """One failure group as ``outbox.failure_groups`` keeps it."""

    fingerprint: str
    error_type: str
    #: The normalised message (ids, numbers, ... as placeholders).
    message: str
    #: The latest failure's message as raised.
    sample_message: str | None
    frames: list[str]
    tasks: list[str]
    tiers: list[str]
    #: Attempt outcomes seen (``failed``, ``timeout``, ``crashed``).
    outcomes: list[str]
    #: Dead-letter reasons seen (``failed``, ``non_retryable``, ``unknown_task``, ...).
    reasons: list[str]
    failed_attempts: int
    dead_letters: int
    open_dead_letters: int
    first_seen: dt.datetime
    last_seen: dt.datetime
    sample_job_ids: list[Any]
    status: str
    resolved_at: dt.datetime | None
    regressed_at: dt.datetime | None
    #: Who set the status by hand last, when, and why (None: never set by hand).
    status_by: str | None = None
    status_at: dt.datetime | None = None
    status_note: str | None = None

    @property
    def regressed(self) -> bool:
        """It failed again after it was resolved (and is open again)."""
        return self.regressed_at is not None and (self.resolved_at is None or self.regressed_at > self.resolved_at)


class Evidence(msgspec.Struct, frozen=True, kw_only=True):
    """What the rules read besides the group's own columns, computed when the groups are read."""

    #: Of the group's sample jobs (up to 10), those that failed more than once ...
    jobs_retried: int
    #: ... and those whose every failed attempt carries this fingerprint (fails the same way each time).
    jobs_same_every_attempt: int
    #: Circuit breakers that opened while the group was failing (``outbox.breaker_events``).
    breaker_opens: int


class Verdict(msgspec.Struct, frozen=True):
    """A rule's answer: the cause, the suggested action, the evidence it rests on, and the rule's name."""

    cause: str
    action: str
    evidence: str
    rule: str = ""


class TriagedGroup(msgspec.Struct, frozen=True, kw_only=True):
    """A group with the evidence read for it and the verdict of the first rule that answered."""

    group: Group
    evidence: Evidence
    verdict: Verdict


#: A rule: sees a group and its evidence; returns a verdict, or None to let the next rule decide.
Rule = Callable[[Group, Evidence], Verdict | None]

# --- The patterns the built-in rules match (on the exception type name and the raw message). ---------

_POISON_REASONS = frozenset({"undecodable", "unknown_job", "unknown_task"})
_POISON_TYPES = frozenset({"UnknownTask"})
_CODE_DEFECT_TYPES = frozenset({
    "TypeError", "AttributeError", "NameError", "UnboundLocalError", "ImportError", "ModuleNotFoundError",
    "SyntaxError", "NotImplementedError", "AssertionError", "RecursionError",
})
# A bare 429 is not enough: an amount or an id can be 429 (the quality benchmark found one), so the
# status code must come with words that make it one.
_RATE_LIMIT = re.compile(r"\b(?:http|status(?: code)?|response|error(?: code)?)[\s:=]*429\b|\b429 too many requests\b|"
                         r"too many requests|rate[ _-]?limit|throttl|quota exceeded", re.IGNORECASE)
_OUTAGE_TYPES = re.compile(r"connect|timeout|timedout|unavailable|breaker|circuit|brokenpipe|gaierror|"
                           r"remotedisconnected|protocolerror", re.IGNORECASE)
_OUTAGE_MESSAGE = re.compile(
    r"connection (?:refused|reset|aborted|closed)|timed? ?out|(?:temporarily|downstream|service) unavailable|"
    r"name or service not known|"
    r"no route to host|breaker (?:is )?open|circuit (?:is )?open|"
    r"\b(?:http|status(?: code)?|response|error)[\s:=]*5\d\d\b|"
    r"\b5\d\d (?:internal server error|bad gateway|service unavailable|gateway timeout)",
    re.IGNORECASE)
_DATA_TYPES = re.compile(r"^(?:ValueError|KeyError|LookupError|IndexError|ValidationError|DoesNotExist|NotFound\w*|"
                         r"IntegrityError|DataError|UnicodeDecodeError|JSONDecodeError|DecodeError|Reject)$")
_DATA_MESSAGE = re.compile(
    r"not found|does not exist|no such|invalid|validation|malformed|missing|required|"
    r"\b(?:http|status(?: code)?|response|error)[\s:=]*4\d\d\b|"
    r"\b4\d\d (?:bad request|unauthorized|forbidden|not found|conflict|gone|unprocessable)",
    re.IGNORECASE)


def _text(group: Group) -> str:
    """The normalised message, then the latest raw one: the normalised message carries the root cause
    of a chained exception (`` <- Type: message``) and keeps status codes; the raw one adds what a
    placeholder replaced."""
    return "\n".join(t for t in (group.message, group.sample_message) if t)


def _types(group: Group) -> str:
    """The group's exception type and the types of the causes chained into its normalised message."""
    return " ".join([group.error_type, *re.findall(r" <- ([\w.]+)", group.message)])


#: A KeyError or IndexError whose whole message is the key or the index: raised by a subscript in the
#: code (``order["shipping_address"]``), not by the application describing bad data.
_SUBSCRIPT_MESSAGE = re.compile(r"<str>|<n>|'[^']*'|-?\d+|(?:list|tuple|string) index out of range")


def _seen(group: Group) -> str:
    """How much and how long: the start of every evidence text."""
    window = (group.last_seen - group.first_seen).total_seconds()
    text = (f"{group.failed_attempts} failed attempt(s), {group.dead_letters} dead letter(s) "
            f"({group.open_dead_letters} open) over {window:.0f} s")
    if group.regressed and group.regressed_at is not None:
        # A regression is the most urgent thing a resolved group can say: put it in every verdict.
        text += f"; REGRESSED at {group.regressed_at.isoformat()} after being resolved"
    return text


# --- The built-in rules, in the order they are tried. --------------------------------------------------

def poison_message(group: Group, evidence: Evidence) -> Verdict | None:
    """A message no handler can run: undecodable body, unknown job, unknown task."""
    reasons = sorted(_POISON_REASONS.intersection(group.reasons))
    if not reasons and group.error_type not in _POISON_TYPES:
        return None
    return Verdict("poison message",
                   "discard it; fix the producer (or register the task, then redrive); never redrive as it is",
                   f"dead-letter reason {', '.join(reasons) or group.error_type}; {_seen(group)}")


#: What RabbitMQ's dead-lettering means (workers/dlq_sweeper.py records its x-death reason as the dead
#: letter's reason, error type ``BrokerDeadLettered``), most telling first.
_BROKER_ACTIONS = {
    "delivery_limit": "it was delivered again and again without an ack (a consumer crashed or hung on it): "
                      "inspect a sample first; discard it if it is poison, else redrive",
    "maxlen": "the queue hit its length limit (x-max-length) while workers were behind: add workers or raise "
              "the limit, then redrive paced",
    "expired": "its TTL ran out in the queue before a worker took it (workers behind or stopped): clear the "
               "backlog, then redrive",
    "rejected": "a consumer other than Tierbox's workers rejected it: find that consumer (x-first-death-queue), "
                "then redrive",
}


def broker_dead_letter(group: Group, evidence: Evidence) -> Verdict | None:
    """RabbitMQ itself dead-lettered the message (length limit, TTL, delivery limit, a foreign rejection)."""
    reasons = [r for r in _BROKER_ACTIONS if r in group.reasons]
    if group.error_type != "BrokerDeadLettered" and not set(reasons) - {"rejected"}:
        return None  # "rejected" alone is the broker's only when the sweeper says so (the error type)
    reason = reasons[0] if reasons else "rejected"
    return Verdict("broker dead letter", _BROKER_ACTIONS[reason],
                   f"x-death reason {', '.join(reasons) or reason}; dead-lettered by RabbitMQ, not by a handler; "
                   f"{_seen(group)}")


def timeout_or_crash(group: Group, evidence: Evidence) -> Verdict | None:
    """The attempt ran out of time, or its worker died under it."""
    if "timeout" in group.outcomes or "timeout" in group.reasons:
        return Verdict("timeout",
                       "raise the task's timeout or make it faster (check the downstream's latency), then redrive",
                       f"attempt outcome 'timeout'; {_seen(group)}")
    if "crashed" in group.outcomes or "crashed" in group.reasons:
        return Verdict("crashed",
                       "check the worker's logs and memory (OOM kill, shutdown without grace), then redrive",
                       f"attempt outcome 'crashed' ({group.error_type}); {_seen(group)}")
    return None


def code_defect(group: Group, evidence: Evidence) -> Verdict | None:
    """A programming error: the code, not the data or a downstream, is wrong."""
    subscript = (group.error_type in ("KeyError", "IndexError") and bool(group.frames)
                 and _SUBSCRIPT_MESSAGE.fullmatch(group.message.split(" <- ")[0]) is not None)
    if group.error_type not in _CODE_DEFECT_TYPES and not subscript:
        return None
    where = f" in {group.frames[0]}" if group.frames else ""
    return Verdict("code defect", "fix, deploy, then redrive the group",
                   f"{group.error_type}{where}; {_seen(group)}")


def rate_limited(group: Group, evidence: Evidence) -> Verdict | None:
    """The downstream said "too many requests"."""
    match = _RATE_LIMIT.search(_text(group)) or _RATE_LIMIT.search(_types(group))
    if match is None:
        return None
    return Verdict("rate limited",
                   "redrive paced (a flow-control rate limit on the task, or small batches)",
                   f"{match.group(0)!r} in {group.error_type}; {_seen(group)}")


def provider_outage(group: Group, evidence: Evidence) -> Verdict | None:
    """A downstream is down: connection errors, timeouts, 5xx, or an open breaker."""
    by_type = _OUTAGE_TYPES.search(_types(group))
    by_message = _OUTAGE_MESSAGE.search(_text(group))
    if by_type is None and by_message is None and evidence.breaker_opens == 0:
        return None
    signs = [f"type {_types(group).replace(' ', ' <- ')}" if by_type else "",
             f"{by_message.group(0)!r}" if by_message else "",
             f"{evidence.breaker_opens} breaker opening(s) meanwhile" if evidence.breaker_opens else ""]
    jobs = len(group.sample_job_ids)
    return Verdict("provider outage", "redrive when the breaker is closed (the downstream answers again)",
                   f"{'; '.join(s for s in signs if s)}; {jobs} job(s) sampled; {_seen(group)}")


def data_error(group: Group, evidence: Evidence) -> Verdict | None:
    """The job's own data is wrong: it fails the same way on every attempt (validation, not found, 4xx)."""
    by_type = _DATA_TYPES.match(group.error_type)
    by_message = _DATA_MESSAGE.search(_text(group))
    same_way = evidence.jobs_retried > 0 and evidence.jobs_same_every_attempt == evidence.jobs_retried
    refused = "non_retryable" in group.reasons
    if not (by_type or by_message or same_way or refused):
        return None
    signs = [f"type {group.error_type}" if by_type else "", f"{by_message.group(0)!r}" if by_message else "",
             "the handler refused it (Reject)" if refused else "",
             f"{evidence.jobs_same_every_attempt} of {evidence.jobs_retried} retried job(s) failed the same way "
             "on every attempt" if evidence.jobs_retried else ""]
    return Verdict("data error", "discard the jobs or fix their data, then redrive",
                   f"{'; '.join(s for s in signs if s)}; {_seen(group)}")


def unclassified(group: Group, evidence: Evidence) -> Verdict:
    """No rule answered: say so, and point at the sample jobs."""
    return Verdict("unclassified", "inspect the sample jobs' attempts and tracebacks",
                   f"{group.error_type}: no rule matched; {_seen(group)}")


#: The built-in rules, tried in this order after the application's own.
BUILTIN_RULES: tuple[Rule, ...] = (poison_message, broker_dead_letter, timeout_or_crash, code_defect, rate_limited,
                                   provider_outage, data_error)

_app_rules: list[Rule] = []


def register_rule(rule: Rule) -> Rule:
    """Add an application rule, tried before the built-in ones (in registration order); usable as a decorator.

    The rule sees a :class:`Group` and its :class:`Evidence` and returns a :class:`Verdict` (cause,
    action, evidence text) or None to pass. Registering the same function twice adds it once.
    """
    if rule not in _app_rules:
        _app_rules.append(rule)
    return rule


def unregister_rule(rule: Rule) -> None:
    """Remove an application rule (tests; a plugin being unloaded)."""
    if rule in _app_rules:
        _app_rules.remove(rule)


def rules() -> list[Rule]:
    """Every rule in the order tried: the application's, then :data:`BUILTIN_RULES`."""
    return [*_app_rules, *BUILTIN_RULES]


def classify(group: Group, evidence: Evidence) -> Verdict:
    """The verdict of the first rule that answers (``rule`` set to its name), else :func:`unclassified`."""
    for rule in rules():
        verdict = rule(group, evidence)
        if verdict is not None:
            return msgspec.structs.replace(verdict, rule=verdict.rule or getattr(rule, "__name__", "rule"))
    return msgspec.structs.replace(unclassified(group, evidence), rule="unclassified")


def _triaged(row: queries.FailureGroupRow) -> TriagedGroup:
    fields = row._asdict()
    evidence = Evidence(jobs_retried=fields.pop("jobs_retried"),
                        jobs_same_every_attempt=fields.pop("jobs_same_every_attempt"),
                        breaker_opens=fields.pop("breaker_opens"))
    group = Group(**fields)
    return TriagedGroup(group=group, evidence=evidence, verdict=classify(group, evidence))


def _params(status: str | None, task: str | None, fingerprint: str | None, limit: int) -> dict[str, Any]:
    return {"status": status, "task": task, "fingerprint": fingerprint, "limit": limit}


def groups(conn: Any, *, status: str | None = None, task: str | None = None, fingerprint: str | None = None,
           limit: int = 100) -> list[TriagedGroup]:
    """Failure groups, most recently seen first, each with its evidence and verdict (a sync connection)."""
    return [_triaged(r) for r in run(conn, queries.FAILURE_GROUPS, _params(status, task, fingerprint, limit))]


async def groups_async(conn: Any, *, status: str | None = None, task: str | None = None,
                       fingerprint: str | None = None, limit: int = 100) -> Sequence[TriagedGroup]:
    """:func:`groups` on an async connection (the admin API's)."""
    rows = await run_async(conn, queries.FAILURE_GROUPS, _params(status, task, fingerprint, limit))
    return [_triaged(r) for r in rows]
