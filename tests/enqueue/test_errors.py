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


def test_every_error_is_exported_from_outbox() -> None:
    missing = sorted(set(_error_classes()) - set(outbox.__all__))
    assert missing == []
    assert outbox.SchemaOutdatedError is errors.SchemaOutdatedError


def test_the_docstring_draws_every_error_under_its_real_base() -> None:
    drawn = _drawn_parents()
    classes = _error_classes()
    assert set(drawn) == set(classes) - {"TierboxError"}
    for name, parent in drawn.items():
        assert classes[name].__bases__[0].__name__ == parent, name


def test_option_errors_are_not_schedule_errors() -> None:
    assert not issubclass(errors.InvalidOptionError, errors.InvalidScheduleError)
    assert issubclass(errors.InvalidOptionError, errors.EnqueueError)
