"""Errors that mean "the user's input is wrong": the CLI prints them as one line and exits 2."""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad configuration or data; the message names what is wrong and what was expected."""


class DataError(UserInputError):
    """A dataset directory, annotation file or image that is missing or malformed."""


class ConfigError(UserInputError):
    """A configuration that cannot work (conflicting options, missing values)."""
