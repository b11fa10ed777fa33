"""A failure's fingerprint: which failures are "the same problem" (issue #14, docs/triage.md).

``fingerprint(exc)`` hashes three things:

* the exception type (``module.QualName`` for exceptions outside the builtins);
* the message, normalised: the parts that differ between two occurrences of one problem (ids,
  numbers, amounts with their currency, durations with their unit, UUIDs, hex strings, generated
  ids and API keys, IP addresses, e-mail addresses, URLs' query strings, quoted values, timestamps
  and HTTP dates) are replaced by placeholders, so "order 123 not found" and "order 456 not found"
  agree. HTTP status codes (``HTTP 429``, ``503 Service Unavailable``) and errnos are kept: they
  name the problem. For a chained exception (``raise Wrapper(...) from root``) the root cause's
  type and normalised message are appended (``... <- ConnectionResetError: ...``), so one wrapper
  around two root causes makes two groups;
* the application's own innermost stack frames (:data:`MAX_FRAMES` of them, across the chain, the
  root cause's first) as ``module:function``,
  without line numbers (an unrelated edit above the function must not split a group), so the same
  message raised from two code paths does not merge.

Application frames are those whose module is *not* in the standard library
(``sys.stdlib_module_names``), not loaded from a ``site-packages``/``dist-packages`` folder, and not
Tierbox's own (``outbox``, ``tierbox``): a library or Tierbox frame says how the error travelled,
an application frame says which code asked for it.

A handler can name the problem itself (``Reject(..., fingerprint=...)`` or
``ctx.set_fingerprint(...)``); an explicit fingerprint always wins and is stored as given.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Callable
from types import TracebackType
from typing import NamedTuple

#: Application frames that take part in the fingerprint, innermost first.
MAX_FRAMES = 3
#: Longest explicit fingerprint kept (an application string, bounded like every stored text).
MAX_EXPLICIT_CHARS = 200
#: The attribute an explicit fingerprint travels on, from ``ctx`` or ``Reject`` to the failure path.
EXPLICIT_ATTR = "__tierbox_fingerprint__"

#: Top-level packages that are Tierbox's own: never application frames.
_TIERBOX_PACKAGES = frozenset({"outbox", "tierbox"})
_LIBRARY_DIRS = ("site-packages", "dist-packages")

#: Exceptions of a chain (``raise ... from ...``, or raised while handling another) walked to its root.
MAX_CHAIN = 10

# A number as messages print it: 1,234.50 and 1234.50 and 42 (thousands separators would otherwise
# split a group between amounts under and over 1,000).
_NUM = r"\d+(?:,\d{3})*(?:\.\d+)?"
_CURRENCIES = "EUR|USD|GBP|CHF|JPY|CAD|AUD|NZD|SEK|NOK|DKK|PLN|CZK|HUF|INR|CNY|BRL|MXN|ZAR"
_STATUS_PHRASES = (
    "Client Error|Server Error|Bad Request|Unauthorized|Payment Required|Forbidden|Not Found|Method Not Allowed|"
    "Not Acceptable|Request Timeout|Conflict|Gone|Payload Too Large|Unprocessable (?:Entity|Content)|"
    "Too Many Requests|Internal Server Error|Not Implemented|Bad Gateway|Service Unavailable|Gateway Timeout")

# Kept as they are: an HTTP status code or an errno names the problem (429 and 503 from one code path
# are two causes), it does not vary per job. They are set aside before the placeholders and put back.
# A status code is a 3-digit number after "HTTP", "status", "error code", ... or before a reason
# phrase as servers spell it; only the 3-digit numbers of a message are looked at (cheaper than one
# pattern tried at every position).
_STATUS_CANDIDATE = re.compile(r"[1-5](?<!\d[1-5])\d\d(?!\d)")
_STATUS_BEFORE = re.compile(
    r"\b(?:HTTP(?:/\d(?:\.\d)?)?|status(?:[ _]?code)?|error[ _]?code|response[ _]?code|returned)[\s:=#]*$",
    re.IGNORECASE)
_STATUS_AFTER = re.compile(rf"[\s:-]+(?:{_STATUS_PHRASES})\b")
_ERRNO = re.compile(r"\[Errno -?\d+\]|\berrno[ =]-?\d+", re.IGNORECASE)


def _status_code(message: str, start: int, end: int) -> bool:
    """Whether the 3-digit number at ``message[start:end]`` is an HTTP status code by its context."""
    if _STATUS_BEFORE.search(message, max(0, start - 30), start):
        return True
    glued = start > 0 and (message[start - 1].isalnum() or message[start - 1] == "_")
    return not glued and _STATUS_AFTER.match(message, end) is not None


_KEPT = re.compile("\x00([a-j]+)\x00")


def _quoted(match: re.Match[str]) -> str:
    # A quoted value varies per job ("'ACME-1'"); a quoted status line ("'429 Too Many Requests'",
    # httpx's wording) names the problem and stays.
    return match.group(0) if "\x00" in match.group(0) else "<str>"


def _random_id(match: re.Match[str]) -> str:
    # A run of letters and digits that reads like a generated id (a key, a request id): digits and
    # letters mixed, or upper and lower case mixed other than as CamelCase words.
    text = match.group(0)
    has_digit, has_alpha = any(c.isdigit() for c in text), any(c.isalpha() for c in text)
    if has_digit and has_alpha:
        return "<id>"
    if text != text.lower() and text != text.upper() and not _CAMEL.fullmatch(text):
        return "<id>"
    return text


# Words in CamelCase or camelCase, acronyms included (HTTPSConnectionPool, getUserById): not ids.
_CAMEL = re.compile(r"[a-z]*(?:[A-Z]+[a-z]{2,}|[A-Z][a-z])*[A-Z]*")


def _prefixed_id(match: re.Match[str]) -> str:
    # A generated id after a lower-case prefix: sk-proj-..., cus_..., req_... An all-lower-case tail
    # is an identifier (shipping_address), not an id.
    tail = match.group(2)
    return match.group(1) + "<id>" if tail != tail.lower() or any(c.isdigit() for c in tail) else match.group(0)


# Placeholders, applied in this order: an earlier pattern's match is never seen by a later one
# (a UUID is not read as hex and numbers, a timestamp not as numbers, an e-mail not as a quoted word).
# Each rule runs only when the message holds one of its hint's substrings (None: always; _DIGITS:
# any digit): most rules cannot match most messages, and skipping them keeps the failure path cheap.
_DIGITS = re.compile(r"\d").search


def _any(*texts: str) -> Callable[[str], object]:
    """A hint: any of ``texts`` (one compiled search, cheaper than a Python loop of ``in`` tests)."""
    return re.compile("|".join(re.escape(t) for t in texts)).search


_CURRENCY_SET = frozenset(_CURRENCIES.split("|"))
_UPPER3 = re.compile(r"[A-Z]{3}")


def _has_currency(message: str) -> bool:
    """The amount rule's hint: a currency sign, or a currency code among the message's capital triples."""
    return any(sign in message for sign in "$€£¥") or not _CURRENCY_SET.isdisjoint(_UPPER3.findall(message))


_RULES: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str], Callable[[str], object] | None], ...] = (
    # URLs' query strings: the path names the endpoint, the query carries the ids. Also a bare path's
    # query (urllib3 prints "url: /v1/charges?id=...").
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s?#'\"]*)\?[^\s#'\"]*", re.IGNORECASE), r"\1?<query>", _any("?")),
    (re.compile(r"((?<![\w/])/[\w.~%/-]*)\?[^\s#'\"]*"), r"\1?<query>", _any("?")),
    (re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"), "<email>", _any("@")),
    (re.compile(r"\b[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\b", re.IGNORECASE), "<uuid>",
     _DIGITS),
    # HTTP dates (Retry-After, Date): "Tue, 01 Dec 2026 17:00:00 GMT".
    (re.compile(r"\b(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{1,2} (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                r"\d{4} \d{2}:\d{2}:\d{2}(?: (?:GMT|UTC|[+-]\d{4}))?"), "<ts>", _any(", ")),
    (re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?\b"), "<ts>",
     _any("-")),
    (re.compile(r"\b\d{2}:\d{2}:\d{2}(?:[.,]\d+)?\b"), "<ts>", _any(":")),
    # Quotes that open and close outside a word: the apostrophe of "can't" or "customer's" opens nothing.
    (re.compile(r"(?=['\"])(?<!\w)(?:'[^'\n]*'|\"[^\"\n]*\")(?!\w)"), _quoted, _any("'", '"')),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b"), "<ip>", _any(".")),
    (re.compile(r"\b0x[0-9a-f]+\b", re.IGNORECASE), "<hex>", _any("0x", "0X")),
    # A long hex run with at least one digit and one letter (a digest, an object id), not a word.
    (re.compile(r"\b(?=[0-9a-f]{8})(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b", re.IGNORECASE), "<hex>",
     _DIGITS),
    (re.compile(r"(?<![A-Za-z0-9])((?:[a-z]{2,12}[_-]){1,2})([A-Za-z0-9]{8,})(?![A-Za-z0-9])"), _prefixed_id,
     _any("_", "-")),
    # (Leftmost and greedy, a match is always a whole run: no lookarounds needed.)
    (re.compile(r"[A-Za-z0-9]{10,}"), _random_id, None),
    # Money: a number with a currency code or sign on either side (the currency varies with the job).
    (re.compile(rf"(?:[$€£¥]|\b(?:{_CURRENCIES})\s?)-?(?:{_NUM})\b|(?=[-\d])(?<![\w.])-?(?:{_NUM})\s?(?:{_CURRENCIES})\b"),
     "<amount>", _has_currency),
    # Durations: 250ms and 1.5s and 30 seconds are one placeholder (the unit varies with the value).
    (re.compile(rf"(?=\d)(?<![\w.])(?:{_NUM})\s?(?:ms|us|µs|ns|s|secs?|seconds?|min|mins|minutes?|h|hrs?|hours?)\b"),
     "<duration>", _DIGITS),
    # Numbers, also glued to letters ("id42", "#42"): the kind of id that varies per job.
    (re.compile(_NUM), "<n>", _DIGITS),
)


class Fingerprint(NamedTuple):
    """A failure's fingerprint: ``digest`` names its group; ``message`` and ``frames`` are the evidence."""

    digest: str
    message: str
    frames: tuple[str, ...]


def normalize(message: str, *, hints: bool = True) -> str:
    """``message`` with its varying parts (ids, numbers, UUIDs, ...) replaced by placeholders.

    ``hints=False`` tries every rule whatever its hint says: the same result, slower (a test holds
    the two equal, so a wrong hint cannot skip a rule that would have matched).
    """
    kept: list[str] = []

    def keep(text: str) -> str:
        kept.append(text)
        # The index spelled in letters a-j: no placeholder rule reads it as a number or an id.
        return "\x00" + "".join(chr(ord("a") + int(d)) for d in str(len(kept) - 1)) + "\x00"

    message = message.replace("\x00", "")
    if "rrno" in message:
        message = _ERRNO.sub(lambda m: keep(m.group(0)), message)
    codes = [m.span() for m in _STATUS_CANDIDATE.finditer(message) if _status_code(message, *m.span())]
    for start, end in reversed(codes):
        message = message[:start] + keep(message[start:end]) + message[end:]
    for pattern, placeholder, hint in _RULES:
        if hint is None or not hints or hint(message):
            message = pattern.sub(placeholder, message)
    if kept:
        message = _KEPT.sub(lambda m: kept[int("".join(str(ord(c) - ord("a")) for c in m.group(1)))], message)
    return " ".join(message.split())


def is_application_module(module: str, filename: str) -> bool:
    """Whether a frame of ``module`` (loaded from ``filename``) is the application's own code."""
    top = module.partition(".")[0]
    if not top or top in _TIERBOX_PACKAGES or top in sys.stdlib_module_names:
        return False
    return not any(part in filename for part in _LIBRARY_DIRS)


def application_frames(tb: TracebackType | None, limit: int = MAX_FRAMES) -> tuple[str, ...]:
    """The innermost ``limit`` application frames of ``tb`` as ``module:function``, innermost first."""
    frames: list[str] = []
    while tb is not None:
        frame = tb.tb_frame
        module = str(frame.f_globals.get("__name__", ""))
        if is_application_module(module, frame.f_code.co_filename):
            frames.append(f"{module}:{frame.f_code.co_qualname}")
        tb = tb.tb_next
    return tuple(reversed(frames))[:limit]


def type_name(exc: BaseException) -> str:
    """The exception type, qualified by its module unless it is a builtin (``ValueError``)."""
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def digest(type_: str, message: str, frames: tuple[str, ...] = ()) -> str:
    """The group key of a normalised failure (16 hex digits of SHA-256: collisions are not a concern at
    the scale of distinct problems, and a short key reads well in a URL or a log line)."""
    text = "\n".join((type_, message, *frames))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def explicit(exc: BaseException) -> str | None:
    """The fingerprint a handler set for ``exc`` (on ``Reject`` or through ``ctx``), if any."""
    value = getattr(exc, EXPLICIT_ATTR, None)
    return value[:MAX_EXPLICIT_CHARS] if isinstance(value, str) and value else None


def attach(exc: BaseException, value: str | None) -> None:
    """Give ``exc`` the explicit fingerprint ``value`` (from ``ctx``), unless it carries one (``Reject``'s wins)."""
    if value and explicit(exc) is None:
        try:
            setattr(exc, EXPLICIT_ATTR, value)
        except AttributeError:  # an exception type with __slots__: keeps the computed fingerprint
            pass


def chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions behind it, outermost first: its ``__cause__`` (``raise ... from``), else
    the exception it was raised while handling (``__context__``, unless ``from None`` suppressed it)."""
    found = [exc]
    while len(found) < MAX_CHAIN:
        last = found[-1]
        behind = last.__cause__ if last.__cause__ is not None else (
            None if last.__suppress_context__ else last.__context__)
        if behind is None or any(behind is e for e in found):
            break
        found.append(behind)
    return found


def fingerprint(exc: BaseException) -> Fingerprint:
    """The fingerprint of ``exc``: an explicit one if the handler set it, else type + message + frames.

    A chained exception (``raise Wrapper(...) from root``) is fingerprinted by the outermost exception
    (its type and message, what the handler let escape) *and* the root cause (its type and message,
    appended to the message as ``<- Type: message``): one wrapper around a connection reset and around
    a 429 is two problems, not one. Intermediate exceptions are left out. The frames are the
    application's innermost frames across the chain, the root cause's first: where the failing call
    was made, not only where it was wrapped.
    """
    exceptions = chain(exc)
    message = normalize(str(exc) or type(exc).__name__)
    root = exceptions[-1]
    if root is not exc:
        root_text = str(root)
        message += f" <- {type_name(root)}" + (f": {normalize(root_text)}" if root_text else "")
    frames: list[str] = []
    for e in reversed(exceptions):
        frames += [f for f in application_frames(e.__traceback__, limit=MAX_CHAIN * MAX_FRAMES) if f not in frames]
    chosen = explicit(exc)
    top = tuple(frames[:MAX_FRAMES])
    return Fingerprint(chosen if chosen is not None else digest(type_name(exc), message, top), message, top)
