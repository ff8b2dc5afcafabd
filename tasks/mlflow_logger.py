"""Lightning's MLFlowLogger writing into a stage's existing child run."""

from __future__ import annotations

from typing import Literal

from lightning.pytorch.loggers import MLFlowLogger


class StageRunLogger(MLFlowLogger):
    """Logs to the stage's child run but leaves closing it to the pipeline.

    Lightning's logger marks the run FINISHED at the end of every `validate`/`fit` call, which
    would show a still-training stage as finished in the MLflow UI.
    """

    def finalize(self, status: str = "success") -> None:
        """Keep the run open; the pipeline sets its final status."""


def stage_logger(tracking_uri: str | None, run_id: str | None) -> StageRunLogger | Literal[False]:
    """A logger for the stage's run, or False (no logging) outside a tracked pipeline."""
    return StageRunLogger(tracking_uri=tracking_uri, run_id=run_id) if run_id else False
