"""gptflow's contender in benchmarks/peers.py: one run of the real `pretrain` path, its step ends written as JSON.

    python benchmarks/peers_gptflow.py WORK_JSON RESULT_JSON

`gpt.train.pretrain.pretrain` with the MLflow stage logger over a temporary SQLite store (as the
pipeline's pretrain stage and benchmarks/pretrain.py run it); the optimizer steps are clocked by
peers.StepClock. Started by benchmarks/peers.py, which writes WORK_JSON.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peers import StepClock  # noqa: E402 (benchmarks/ is this script's directory)


def main(work_file: str, result_file: str) -> None:
    from mlflow.tracking import MlflowClient

    from gpt.model.config import ModelConfig
    from gpt.train.config import PretrainConfig
    from gpt.train.pretrain import pretrain
    from tasks.mlflow_logger import stage_logger

    work = json.loads(Path(work_file).read_text())
    model = ModelConfig(**work["gptflow_model"])
    train = PretrainConfig(**work["gptflow_pretrain"])
    with tempfile.TemporaryDirectory(prefix="gptflow-peers-run-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        client = MlflowClient(uri)
        exp = client.create_experiment("peers", artifact_location=Path(tmp, "art").as_uri())
        run_id = client.create_run(exp).info.run_id
        clock = StepClock().install()
        logger = stage_logger(uri, run_id)
        _, result = pretrain(model, train, Path(work["shard_dir"]), Path(tmp) / "ckpt", seed=0, logger=logger)
        clock.write(result_file, final_train_loss=result.final_train_loss)


if __name__ == "__main__":
    main(*sys.argv[1:])
