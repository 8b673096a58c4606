"""Errors raised on bad input. Each message names the file or key and what is wrong."""
from __future__ import annotations


class MirlError(Exception):
    """Base class for every user-facing error of mirl (bad file, key, image or checkpoint)."""


class ConfigError(MirlError, ValueError):
    """A configuration key or value is wrong."""


class DataError(MirlError):
    """A dataset folder, image pair or image is missing or unusable."""


class CheckpointError(MirlError):
    """A checkpoint or ticket cannot be read or does not fit the model."""


class DiskFullError(MirlError, OSError):
    """A write failed because the device is full; the message names the file."""


class NotEnoughMemoryError(MirlError, MemoryError):
    """A computation needs more memory than the device has; the message says how to need less."""
