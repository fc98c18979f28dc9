"""User-facing errors and fallback notices: each one a single line naming the problem (or the fallback) and the fix."""
from __future__ import annotations

import warnings


class LlmbinError(Exception):
    """An error the CLI prints as one line and exits non-zero on (no traceback)."""


class LlmbinFallbackWarning(UserWarning):
    """llmbin did something slower or weaker than asked, and says why and how to avoid it."""


_said: set[str] = set()


def warn_once(message: str) -> None:
    """Say a fallback once per process (by its text), on stderr through the warnings machinery: users see it,
    tests can catch it, and `-W error::llmbin.errors.LlmbinFallbackWarning` makes every fallback fatal."""
    if message in _said:
        return
    _said.add(message)
    warnings.warn(f"llmbin: {message}", LlmbinFallbackWarning, stacklevel=3)
