"""Package versions and hardware of the running process, for the report header."""

from __future__ import annotations

import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("torch", "lightning", "mlflow", "prefect", "tiktoken", "numpy", "pandas", "matplotlib")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a run's numbers depend on."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def hardware() -> dict[str, str]:
    """CPU, core count and accelerator of this machine (reads torch only if already imported)."""
    out = {"platform": platform.platform(), "cpu": _cpu_model(), "cores": str(os.cpu_count())}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        out["gpu"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    else:
        out["gpu"] = "none"
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
