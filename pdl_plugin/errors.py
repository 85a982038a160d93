"""Errors that name the problem and the fix. Subclass ValueError so callers that catch config errors still do.

The console entry points print any `PDLError` as one `error:` line and exit with status 2, never a traceback.
"""


class PDLError(ValueError):
    """Base class of every error pdl-plugin raises on bad input."""


class PDLConfigError(PDLError):
    """A PDL setting, recipe key or recipe file is wrong."""


class FrequencyTableError(PDLError):
    """A frequency table is missing, corrupt, or does not match the tokenizer, model or data."""


class PDLDataError(PDLConfigError):
    """The recipe's dataset is missing, unreadable, or has nothing to train on."""


class PDLWriteError(PDLError, OSError):
    """A file or folder could not be written (disk full, not a folder, no permission); what was there is kept.

    Also an `OSError` (with the original `errno`), so code that catches `OSError` around a save still does.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno
