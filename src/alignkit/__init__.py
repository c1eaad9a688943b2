"""alignkit: align language models with preferences."""

__version__ = "0.1.0"


class AlignkitError(Exception):
    """A user-facing error: printed as one line, no traceback, non-zero exit."""
