"""Errors of the stage layer a user can act on; a tiny module, so stage code importing it stays small (stage_lock)."""

from __future__ import annotations


class StageError(RuntimeError):
    """A stage directory is unusable (corrupt, foreign, unwritable); the message names it and the fix."""


class KeyPending(StageError):
    """A stage's key is not known yet: it hashes the outputs of an upstream stage that is not done."""
