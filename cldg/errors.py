"""Errors that the CLI turns into one clear line and an exit code.

`CldgError` is the user's fault (bad input, missing artifact, bad option): exit code 2, no traceback.
Anything else that escapes a stage is an internal error: exit code 1.
"""
from __future__ import annotations


class CldgError(Exception):
    """Bad input or usage. The message is shown as one line; exit code 2."""

    exit_code = 2


def require_file(path, option: str) -> None:
    """A file an option names must be one: else one line, "no such file" or "a folder, not a file"."""
    from pathlib import Path

    if not Path(path).is_file():
        raise CldgError(f"{option} {path}: " + ("a folder, not a file" if Path(path).is_dir() else "no such file"))


class MissingArtifactError(CldgError):
    """An input artifact is missing or has an incompatible schema."""


class CorruptArtifactError(CldgError):
    """A file of an artifact differs from the sha256 (or size) its manifest records, or is missing."""


class ArtifactLockedError(CldgError):
    """Another cldg process is writing the same artifact (it holds its lock)."""


class DiskFullError(CldgError):
    """The disk filled up while a stage wrote its artifact; earlier artifacts and `latest` are untouched."""


class TrainingDivergedError(CldgError):
    """A loss became NaN/inf; the last good checkpoint is kept."""

    exit_code = 1
