"""alignkit: align language models with preferences."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("alignkit")  # the installed metadata: pyproject.toml's version, one source
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"


class AlignkitError(Exception):
    """A user-facing error: printed as one line, no traceback, non-zero exit."""
