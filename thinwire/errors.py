"""User-facing errors: one line, naming the field and what is allowed. The CLI maps them to exit 2."""
from __future__ import annotations


class UserError(ValueError):
    """Bad input from a user (flag, config file, data file). Printed as one line, never a traceback."""


class ConfigError(UserError):
    def __init__(self, field: str, problem: str, allowed: str | None = None) -> None:
        self.field, self.problem, self.allowed = field, problem, allowed
        msg = f"{field}: {problem}"
        if allowed:
            msg += f"; allowed: {allowed}"
        super().__init__(msg)


class DataError(UserError):
    """A data file is missing, unreadable or corrupt."""
