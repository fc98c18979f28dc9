"""User-facing errors: each one a single line naming the problem and the fix."""


class LlmbinError(Exception):
    """An error the CLI prints as one line and exits non-zero on (no traceback)."""
