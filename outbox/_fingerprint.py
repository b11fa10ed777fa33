"""A failure's fingerprint: which failures are "the same problem" (issue #14, docs/triage.md).

``fingerprint(exc)`` hashes three things:

* the exception type (``module.QualName`` for exceptions outside the builtins);
* the message, normalised: the parts that differ between two occurrences of one problem (ids,
  numbers, UUIDs, hex strings, e-mail addresses, URLs' query strings, quoted values, timestamps)
  are replaced by placeholders, so "order 123 not found" and "order 456 not found" agree;
* the application's own innermost stack frames (:data:`MAX_FRAMES` of them) as ``module:function``,
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

# Placeholders, applied in this order: an earlier pattern's match is never seen by a later one
# (a UUID is not read as hex and numbers, a timestamp not as numbers, an e-mail not as a quoted word).
_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # URLs' query strings: the path names the endpoint, the query carries the ids.
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s?#'\"]*)\?[^\s#'\"]*", re.IGNORECASE), r"\1?<query>"),
    (re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"), "<email>"),
    (re.compile(r"\b[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\b", re.IGNORECASE), "<uuid>"),
    (re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?\b"), "<ts>"),
    (re.compile(r"\b\d{2}:\d{2}:\d{2}(?:[.,]\d+)?\b"), "<ts>"),
    (re.compile(r"'[^'\n]*'|\"[^\"\n]*\""), "<str>"),
    (re.compile(r"\b0x[0-9a-f]+\b", re.IGNORECASE), "<hex>"),
    # A long hex run with at least one digit and one letter (a digest, an object id), not a word.
    (re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b", re.IGNORECASE), "<hex>"),
    # Numbers, also glued to letters ("id42", "#42", "42ms"): the kind of id that varies per job.
    (re.compile(r"\d+(?:\.\d+)?"), "<n>"),
)


class Fingerprint(NamedTuple):
    """A failure's fingerprint: ``digest`` names its group; ``message`` and ``frames`` are the evidence."""

    digest: str
    message: str
    frames: tuple[str, ...]


def normalize(message: str) -> str:
    """``message`` with its varying parts (ids, numbers, UUIDs, ...) replaced by placeholders."""
    for pattern, placeholder in _RULES:
        message = pattern.sub(placeholder, message)
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


def fingerprint(exc: BaseException) -> Fingerprint:
    """The fingerprint of ``exc``: an explicit one if the handler set it, else type + message + frames."""
    message = normalize(str(exc) or type(exc).__name__)
    frames = application_frames(exc.__traceback__)
    chosen = explicit(exc)
    return Fingerprint(chosen if chosen is not None else digest(type_name(exc), message, frames), message, frames)
