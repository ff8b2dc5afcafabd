"""The committed lock of each stage kind's code: forgetting to bump a stage's version fails the tests.

A stage's key holds its definition's `version`, so a change to what a stage writes must come with
a new version, or old outputs are reused silently. `tasks/stage_code.lock.json` records, per stage
kind, its version and a digest of every gptflow module its compute can reach (imports followed
through `gpt/`, `tasks/` and `reports/`, at module level and inside functions). The digest is of
each module's syntax tree without docstrings, so comments, docstrings and formatting do not count.
`tests/test_stage_lock.py` fails when the code of a kind changed under the same version. Then
either bump that kind's `version` (its output changes: every stage of the kind recomputes) or,
when the change cannot alter any output (a refactor, a log line), record it as is:

    python -m tasks.stage_lock --update

and commit the lock file with the change, so a reviewer sees the decision.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK_FILE = Path(__file__).with_name("stage_code.lock.json")
PACKAGES = ("gpt", "tasks", "reports")  # the code a stage's output can depend on (flows/ only orchestrates)


def _module_file(name: str) -> Path | None:
    """The source file of a gptflow module, or None for anything else (third-party, stdlib, missing)."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))  # found by path, not imported: nothing runs, torch stays unloaded
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None  # `from pkg.module import Name`: Name is not a module


def _imports(tree: ast.AST, module: str) -> set[str]:
    """Names of the modules `tree` imports anywhere (top level and inside functions)."""
    out: set[str] = set()
    package = module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)  # `from tasks import corpus`
    return out


def _normalized(tree: ast.Module) -> str:
    """The syntax tree without docstrings, as text: what the code does, not how it is documented."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def module_digests(root_module: str) -> dict[str, str]:
    """sha256 of every gptflow module reachable from `root_module` by imports, by path relative to the repo."""
    seen: dict[str, str] = {}
    todo = [root_module]
    visited: set[str] = set()
    while todo:
        name = todo.pop()
        if name in visited:
            continue
        visited.add(name)
        path = _module_file(name)
        if path is None:
            continue
        source = path.read_text()
        todo.extend(_imports(ast.parse(source), name))
        normalized = _normalized(ast.parse(source, str(path)))
        seen[str(path.relative_to(ROOT))] = hashlib.sha256(normalized.encode()).hexdigest()[:16]
    return dict(sorted(seen.items()))


def current() -> dict[str, dict]:
    """Per stage kind: its version and the digests of the modules its compute reaches."""
    from tasks.stages import DEFINITIONS

    return {d.kind: {"version": d.version, "modules": module_digests(d.compute.__module__)} for d in DEFINITIONS}


def locked() -> dict[str, dict]:
    """The committed lock (empty when there is none yet)."""
    try:
        return json.loads(LOCK_FILE.read_text())
    except FileNotFoundError:
        return {}


def problems() -> list[str]:
    """One line per stage kind whose code changed under the same version (or whose version is not recorded)."""
    now, then = current(), locked()
    out = []
    for kind, entry in now.items():
        old = then.get(kind)
        if old is None:
            out.append(f"stage kind '{kind}' is not in {LOCK_FILE.name}")
            continue
        if old["version"] != entry["version"]:
            out.append(f"stage '{kind}': version {old['version']} -> {entry['version']} is not recorded in the lock")
            continue
        modules = set(old["modules"]) | set(entry["modules"])
        changed = sorted(m for m in modules if old["modules"].get(m) != entry["modules"].get(m))
        if changed:
            out.append(
                f"stage '{kind}' (version {entry['version']}): its code changed in {', '.join(changed)}; "
                f"bump its version if its output changes, else record it with `python -m tasks.stage_lock --update`"
            )
    return out


def update() -> None:
    """Record the current code of every stage kind as what its version means."""
    LOCK_FILE.write_text(json.dumps(current(), indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    """`python -m tasks.stage_lock [--update]`: check (or record) the stage code lock."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help="record the current code as each version's code")
    args = parser.parse_args(argv)
    if args.update:
        update()
        print(f"wrote {LOCK_FILE}")
        return 0
    found = problems()
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
