"""Multi-process pretraining as a child job of the pretrain stage: `python -m tasks.pretrain_worker SPEC`.

Lightning's DDP/FSDP launcher starts the other local ranks by re-running the current script, and
torchrun/srun start every rank from a command line; either way the thing re-run must be this worker
(train, write the stage's files from rank 0), never the whole `gptflow run` with its Prefect flow.
The spec and rank 0's result are JSON files in the stage's checkpoints directory, which every node
of a multi-node job sees when the workspace is on shared storage.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from gpt.config.secrets import install_log_redaction, redact_text
from gpt.train.config import PretrainConfig
from tasks.definition import StageOutput
from tasks.errors import StageError
from tasks.placement import planned_world_size
from tasks.pretrain_job import PretrainJob, train

SPEC_FILE, RESULT_FILE, LOG_FILE = "worker_spec.json", "worker_result.json", "worker.log"
ROOT = Path(__file__).resolve().parents[1]


def needs_worker(cfg: PretrainConfig) -> bool:
    """Train in a child job when an external launcher is configured or more than one process will train."""
    return bool(cfg.launcher) or planned_world_size(cfg) > 1


def run_worker(job: PretrainJob) -> StageOutput:
    """Run `pretrain.launcher` + this module on the job's spec file and return rank 0's result.

    The child is its own process group, so an interrupted stage (SIGTERM, Ctrl-C) takes all ranks down.
    """
    ckpt_dir = job.checkpoints
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (ckpt_dir / SPEC_FILE).write_text(job.to_json())
    (ckpt_dir / RESULT_FILE).unlink(missing_ok=True)
    command = [*shlex.split(job.section.pretrain.launcher), sys.executable, "-m", __name__, str(ckpt_dir / SPEC_FILE)]
    if shutil.which(command[0]) is None:
        raise StageError(f"config key 'pretrain.launcher': command {command[0]!r} not found on PATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    log = ckpt_dir / LOG_FILE
    print(f"pretrain: training job: {shlex.join(command)} (stderr: {log})", file=sys.stderr, flush=True)
    with open(log, "ab") as log_file:
        proc = subprocess.Popen(command, env=env, stderr=log_file, start_new_session=True)
        try:
            code = proc.wait()
        except BaseException:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            raise
    result_file = ckpt_dir / RESULT_FILE
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    if "error" in result:
        raise StageError(result["error"])
    if code != 0 or "summary" not in result:
        lines = log.read_text(errors="replace").strip().splitlines()
        raise StageError(
            f"training job `{shlex.join(command)}` failed (exit {code}): {lines[-1] if lines else ''} (log: {log})"
        )
    return StageOutput(**result)


def main(spec_path: str) -> None:
    """Train on this rank from the spec; rank 0 writes the result file (or the one-line error)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    install_log_redaction()  # its log is a file in the stage dir
    job = PretrainJob.from_json(Path(spec_path).read_text())
    result_file = Path(spec_path).with_name(RESULT_FILE)
    try:
        result = train(job)
    except StageError as e:
        if rank_zero_only.rank == 0:  # type: ignore[attr-defined]  # set by lightning at import; its stub (a function) lacks it
            result_file.write_text(json.dumps({"error": redact_text(str(e))}))
        sys.exit(1)
    if rank_zero_only.rank == 0:  # type: ignore[attr-defined]  # set by lightning at import; its stub (a function) lacks it
        result_file.write_text(json.dumps(asdict(result)))


if __name__ == "__main__":
    main(sys.argv[1])
