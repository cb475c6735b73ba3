"""The errors a user can fix: each message is one line, written for the person running the job.

The CLI turns every ``UsageError`` into that line on stderr and exit code 2; any other
exception is a failed job (exit code 1).
"""
from __future__ import annotations


class UsageError(ValueError):
    """Something the user asked for cannot be done as asked; the message says what and why."""


class SourceError(UsageError):
    """A source or destination that cannot be read or written."""


class OptionError(UsageError):
    """An option value that names nothing known, or values that cannot work together."""


class ModelError(UsageError):
    """A model argument that names no detector that can be loaded."""


class VideoError(ValueError):
    """What is wrong with one input video, said plainly: the message is that video's
    ``error_message`` as it stands, with no exception name."""


class JobFailed(RuntimeError):
    """The job stopped for a reason it can state in one line (exit code 1)."""
