"""Errors a user can cause and fix (bad config, bad data, bad checkpoint): reported in one line."""

from __future__ import annotations

from seqrec.config import ConfigError
from seqrec.data.schema import DataError


class CheckpointError(ValueError):
    """A model or checkpoint folder is missing, incomplete, tampered with or incompatible."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    DataError,
    CheckpointError,
    FileNotFoundError,
    FileExistsError,
)
