"""The errors that stop a training run; each message says what the run folder keeps."""

from __future__ import annotations

__all__ = ["TrainingError", "CheckpointError"]


class TrainingError(RuntimeError):
    """Training could not go on (diverged loss, failed checkpoint); the message says what is kept."""


class CheckpointError(TrainingError):
    """A checkpoint could not be written; the previous one is intact."""
