"""The house rules a refactor must keep: no import cycles, a torch-free planner, `gpt/` free of
orchestration, and the library's public names importable from `gpt`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gpt", "tasks", "flows", "reports")


def module_imports() -> dict[str, set[str]]:
    """Each first-party module -> the first-party modules it imports (anywhere in the file)."""
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def test_no_import_cycles():
    graph = module_imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target] if target in path else [module, target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_gpt_imports_neither_orchestration_nor_tracking():
    for module, targets in module_imports().items():
        if module.startswith("gpt"):
            assert not {t for t in targets if t.startswith(("tasks", "flows", "reports"))}, module
    for path in (ROOT / "gpt").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            assert not [n for n in names if n.split(".")[0] in ("prefect", "mlflow")], path


def test_planner_imports_neither_torch_nor_tiktoken(tmp_path):
    script = (
        "import sys\n"
        "from flows.cli import main\n"
        f"code = main(['stages', '--config', {str(ROOT / 'configs/micro.yaml')!r}, '--workspace', {str(tmp_path)!r}])\n"
        "heavy = sorted(m for m in ('torch', 'tiktoken', 'lightning') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout[-2000:]


def test_public_api_is_importable_from_the_package(tmp_path):
    import gpt

    cfg = gpt.ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=300)
    model = gpt.GPT(cfg)
    gpt.save_model(model, tmp_path / "m")
    again = gpt.load_model(tmp_path / "m")
    assert again.config == cfg
    assert sorted(gpt.__all__) == sorted(gpt._PUBLIC)
    for name in gpt.__all__:
        assert getattr(gpt, name) is not None, name
    with pytest.raises(AttributeError):
        gpt.no_such_name  # noqa: B018
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, gpt; print('torch' in sys.modules)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.stdout.strip() == "False", proc.stderr
