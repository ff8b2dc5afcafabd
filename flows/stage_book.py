"""Running one stage from the flow: its MLflow child run opened before, settled after.

All MLflow bookkeeping stays in the flow's thread, whichever task runner computed the stage.
"""

from __future__ import annotations

from typing import Any

from prefect import Task
from prefect.exceptions import TerminationSignal
from prefect.states import State

from flows.workspace import Workspace
from gpt.config.experiment import ExperimentConfig
from tasks.child_process import Placement
from tasks.definition import StageEnv
from tasks.locks import shared_locks
from tasks.registry import register_stage_model
from tasks.runner import BAD_INPUT, CACHED, stage_task
from tasks.stage import Stage
from tasks.tracking import Tracker

INTERRUPTS = (KeyboardInterrupt, SystemExit, TerminationSignal)


class StageBook:
    """Starts stages' child runs, builds their task calls, and records how each one ended."""

    def __init__(self, tracker: Tracker, cfg: ExperimentConfig, plan: list[Stage], forced: set[str], ws: Workspace):
        self.tracker, self.cfg, self.forced, self.ws = tracker, cfg, forced, ws
        self.by_name = {s.name: s for s in plan}
        self.outcome: dict[str, str] = {}

    def computes(self, stage: Stage) -> bool:
        """Whether `stage` will be (re)computed rather than reused: forced, or not done in this workspace."""
        return stage.name in self.forced or not stage.is_done()

    def call(
        self, stage: Stage, child: str, placement: Placement | None = None
    ) -> tuple[Task[..., State], dict[str, Any]]:
        """The Prefect task for `stage` and its parameters: the stage (its section is all it computes
        from), where to log, whether it is forced, and where it computes."""
        env = StageEnv(stage.name, child, self.tracker.tracking_uri, self.ws.downloads, self.ws.digests)
        params = {"stage": stage, "env": env, "force": stage.name in self.forced, "placement": placement}
        return stage_task(stage), params

    def begin(self, stage: Stage) -> str:
        """Pin the stage's key to the upstream outputs there are now, and open its MLflow child run."""
        stage.pin()
        return self.tracker.start_child(stage)

    def run_inline(self, stage: Stage) -> str | None:
        """Run `stage` in the flow's thread; returns a bad-input message, or None when it finished."""
        child = self.begin(stage)
        try:
            task, params = self.call(stage, child)
            state = task(**params, return_state=True)
        except INTERRUPTS as e:
            self.tracker.fail(child, e, "KILLED")
            raise
        except BaseException as e:
            self.tracker.fail(child, e)
            raise
        return self.settle(stage, child, state)

    def run_in_order(self, stages: list[Stage]) -> str | None:
        """Run stages one after another in the flow's thread, stopping at the first bad input (its message)."""
        for stage in stages:
            error = self.run_inline(stage)
            if error:
                return error
        return None

    def settle(self, stage: Stage, child: str, state: State) -> str | None:
        """Close the child run from the stage task's final state: metrics, artifacts, registry.

        Returns the one-line message of a bad-input failure; other failures are raised.
        """
        if state.name == BAD_INPUT:
            self.tracker.fail(child, str(state.message))  # Failed(name=BAD_INPUT) always has a message
            return f"stage '{stage.name}': {state.message}"
        try:
            result = state.result()
        except BaseException as e:
            self.tracker.fail(child, e, "KILLED" if isinstance(e, INTERRUPTS) else "FAILED")
            raise
        cached = state.name == CACHED or not result["computed"]
        reading = [stage.readers_path, *(u.readers_path for u in stage.upstream_stages)]
        with shared_locks(reading):  # what is logged and registered is not rebuilt meanwhile
            if not cached:
                self.tracker.log_artifacts(child, [stage.dir / a for a in result["artifacts"]])
            self.tracker.finish_child(child, stage, stage.manifest(), cached)
            if stage.definition.registers:  # pretrain, evaluate[task]
                register_stage_model(self.tracker.client, self.cfg.experiment, stage, child, cached)
        self.outcome[stage.name] = "cached" if cached else "computed"
        return None
