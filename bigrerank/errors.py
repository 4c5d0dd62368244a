"""The errors a user can fix: `InputError` for a file, model or machine (located by file, line and field) and
`UsageError` for a command-line flag."""
from __future__ import annotations


class InputError(ValueError):
    """Bad input a user can fix: names the file, the 1-based line and the field when known."""

    def __init__(self, path, message: str, line: int | None = None, field: str | None = None):
        self.path, self.line, self.field, self.reason = str(path), line, field, message
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{message}")

    def __reduce__(self):  # picklable, so rank 0 can hand it to the other ranks
        return (InputError, (self.path, self.reason, self.line, self.field))


class UsageError(ValueError):
    """A command-line value a user can fix (`--loss foo`, `--depth 0`): the message names the flag."""
