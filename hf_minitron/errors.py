"""The library's error types. The CLI turns each into ``hf-minitron COMMAND: error: MESSAGE`` (exit code 2, no
traceback); a Python caller catches them as ``ValueError``s.

Every message names what is wrong (the field, file, row or line) and the fix.
"""

from __future__ import annotations


class MinitronError(Exception):
    """Base of every error hf-minitron raises on purpose (bad input, refused request)."""


class ConfigError(MinitronError, ValueError):
    """A stage config field (or recipe entry) that cannot be used: the message names the field and the fix."""


class DataError(MinitronError, ValueError):
    """A data source that cannot be read or used: the message names the file, the row or line, and the fix."""


class OutputDirError(MinitronError, FileExistsError):
    """An output location that cannot be written: a file, a non-empty directory without overwrite, no permission."""


def yaml_error_text(err) -> str:
    """A YAML parser error on one line: ``line L column C: PROBLEM``."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"line {mark.line + 1} column {mark.column + 1}: {problem}" if mark is not None else problem


__all__ = ["ConfigError", "DataError", "MinitronError", "OutputDirError"]
