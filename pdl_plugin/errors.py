"""Errors that name the problem and the fix. Subclass ValueError so callers that catch config errors still do."""


class PDLError(ValueError):
    """Base class of every error pdl-plugin raises on bad input."""


class PDLConfigError(PDLError):
    """A PDL setting, recipe key or recipe file is wrong."""


class FrequencyTableError(PDLError):
    """A frequency table is missing, corrupt, or does not match the tokenizer, model or data."""
