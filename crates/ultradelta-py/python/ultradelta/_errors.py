"""Exception classes of :mod:`ultradelta`, one per cause.

Each carries the one-line message the ``ultradelta`` command line prints after ``error:`` (naming the file, the
tensor and what was expected); configuration errors name the keyword option instead of the flag.
"""


class UltraDeltaError(Exception):
    """Base class of every error raised by :mod:`ultradelta`."""


class CorruptArchiveError(UltraDeltaError):
    """The archive is damaged or hostile: a checksum, a limit, a record's contents, an escaping file name, or
    values that overflow the tensor's dtype (``ultradelta verify`` exits with 3)."""


class WrongBaseError(UltraDeltaError):
    """The archive is fine but was made against another base checkpoint, or a base tensor changed (``verify``
    exits with 4); from :func:`ultradelta.compress`, base and fine-tune do not match."""


class InvalidOptionError(UltraDeltaError, ValueError):
    """An option is unknown, of the wrong type, out of range, or contradicts another one."""


class UltraDeltaIOError(UltraDeltaError, OSError):
    """Reading or writing a file failed: missing, unreadable, not a checkpoint, or the output exists (pass
    ``force=True`` to replace it)."""
