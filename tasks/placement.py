"""Where jobs run, decided without importing torch (planning and cached reruns never do).

The keys of training stages hold what placement changes about the result: the device kind (CPU
and GPU numerics differ; `precision: auto` and `compile` resolve from it) and the global batch,
which is `batch_size` × ranks unless `tokens_per_step` fixes it.
"""

from __future__ import annotations

import glob
import os

from gpt.train.config import PretrainConfig


def visible_gpus() -> int:
    """NVIDIA GPUs this process may use: device files, narrowed by CUDA_VISIBLE_DEVICES."""
    devices = len(glob.glob("/dev/nvidia[0-9]*"))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = min(devices, len([d for d in visible.split(",") if d.strip()]))
    return devices


def device_kind(accelerator: str) -> str:
    """`accelerator` resolved: `auto` is gpu when a GPU is visible, else cpu."""
    if accelerator != "auto":
        return "gpu" if accelerator == "cuda" else accelerator
    return "gpu" if visible_gpus() else "cpu"


def planned_world_size(cfg: PretrainConfig) -> int:
    """Training processes `devices` × `num_nodes` will start (`auto`: the visible GPUs, or one CPU process)."""
    devices = str(cfg.devices).strip()
    if devices in ("auto", "-1"):
        per_node = visible_gpus() if device_kind(cfg.accelerator) == "gpu" else 1
    elif "," in devices or devices.startswith("["):
        per_node = len([d for d in devices.strip("[]").split(",") if d.strip()])
    else:
        per_node = int(devices)
    return max(1, per_node) * cfg.num_nodes
