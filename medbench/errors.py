"""Errors meant for humans.

A :class:`MedbenchError` carries a single line that names the file or field at fault and the fix. The
command-line entry points print that line and exit non-zero instead of showing a traceback.
"""


class MedbenchError(Exception):
    """A user-facing problem (bad input, missing file, missing configuration)."""


class DataError(MedbenchError):
    """A dataset, data file or image could not be used as given."""
