"""The exception tree: every error is exported from ``outbox`` and drawn where it sits in the hierarchy."""

from __future__ import annotations

import inspect
import re

import outbox
from outbox import errors

# "    │   ├── UnknownTaskError       field ..." -> depth 2, name UnknownTaskError
_BRANCH = re.compile(r"^(?P<indent>(?:│   |    )*)(?:├── |└── )(?P<name>\w+)")


def _drawn_parents() -> dict[str, str]:
    """{class: parent} as the module docstring draws them."""
    doc = errors.__doc__ or ""
    stack = ["TierboxError"]
    parents: dict[str, str] = {}
    for line in doc.splitlines():
        m = _BRANCH.match(line.removeprefix("    "))
        if m is None:
            continue
        depth = len(m["indent"]) // 4
        del stack[depth + 1:]
        parents[m["name"]] = stack[depth]
        stack.append(m["name"])
    return parents


def _error_classes() -> dict[str, type[BaseException]]:
    return {name: cls for name, cls in vars(errors).items()
            if inspect.isclass(cls) and issubclass(cls, errors.TierboxError) and cls.__module__ == errors.__name__}


def _all_outbox_errors() -> dict[str, type[BaseException]]:
    """Every TierboxError subclass defined anywhere in ``outbox`` (errors.py or next to its code)."""
    found: dict[str, type[BaseException]] = {}
    todo: list[type[BaseException]] = [errors.TierboxError]
    while todo:
        cls = todo.pop()
        if cls.__module__.split(".")[0] == "outbox":
            found[cls.__name__] = cls
        todo += cls.__subclasses__()
    return found


def test_every_error_is_exported_from_outbox() -> None:
    missing = sorted(set(_error_classes()) - set(outbox.__all__))
    assert missing == []
    assert outbox.SchemaOutdatedError is errors.SchemaOutdatedError
    # Errors defined beside their code (webhooks, progress) are exported too.
    assert {"WebhookError", "ProgressError", "CapabilityError"} <= set(_all_outbox_errors())
    for name, cls in _all_outbox_errors().items():
        assert getattr(outbox, name, None) is cls and name in outbox.__all__, name


def test_the_docstring_draws_every_error_under_its_real_base() -> None:
    drawn = _drawn_parents()
    classes = _error_classes()
    # errors.py's classes and those defined beside their code (a superset of classes).
    assert set(classes) <= set(_all_outbox_errors())
    assert set(drawn) == set(_all_outbox_errors()) - {"TierboxError"}
    for name, parent in drawn.items():
        assert _all_outbox_errors()[name].__bases__[0].__name__ == parent, name


def test_the_docstring_draws_every_error_outbox_exports() -> None:
    # The tree once drifted: WebhookError, ProgressError and CapabilityError were added in their own
    # modules and never drawn, which the errors.py-only check above could not see.
    exported = {name for name in outbox.__all__
                if inspect.isclass(cls := getattr(outbox, name)) and issubclass(cls, errors.TierboxError)}
    assert exported == set(_all_outbox_errors())
    assert set(_drawn_parents()) == exported - {"TierboxError"}


def test_option_errors_are_not_schedule_errors() -> None:
    assert not issubclass(errors.InvalidOptionError, errors.InvalidScheduleError)
    assert issubclass(errors.InvalidOptionError, errors.EnqueueError)
