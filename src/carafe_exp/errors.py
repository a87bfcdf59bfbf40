"""Errors that mean "the user's input or environment is wrong": the CLI prints them as one line and exits 2."""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad configuration or data; the message names what is wrong and what was expected."""


class DataError(UserInputError):
    """A dataset directory, annotation file or image that is missing or malformed."""


class ConfigError(UserInputError):
    """A configuration that cannot work (conflicting options, missing values)."""


class OutputError(UserInputError):
    """An output (checkpoint, record) that cannot be written: the directory is read-only, missing or full.

    The message names the path and what was needed (the bytes of a checkpoint); whatever the
    path held before is left as it was.
    """
