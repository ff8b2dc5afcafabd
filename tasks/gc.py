"""`gptflow gc`: find (and remove) what nothing needs any more under `<workspace>/artifacts/`.

Stage directories are content-addressed and never deleted by a run, so the workspace only grows:
every config change, every code-version bump leaves its old directories behind, and killed runs
leave partial directories, corrupt checkpoints, older copies of rebuilt stages and lock files.

What is *reachable* (kept), from the MLflow store and the lock files:

1. the stages of the last N pipeline runs of each experiment (any status);
2. the stage of every registered model version's run;
3. the stages of every RUNNING pipeline run (it reads them right now);
4. any key whose `<key>.lock` or `<key>.readers` flock is held (a process computes or reads it);
5. a resumable partial of the current code version, and its inputs;

and the upstream closure of all of these through each `manifest.json`'s "upstream" (a registered
fine-tuned model's evaluate stage needs its finetune, which needs pretrain, tokenizer, ...).

Everything else under `artifacts/<kind>/` that gptflow wrote is garbage: unreachable stage
directories, partials of another code version (or without a record, from an older gptflow) or of
a data stage (rebuilt from scratch anyway), interrupted store pulls, `.corrupt` checkpoints,
`.replaced-*` copies, lock files of keys that have no directory, and leftovers of a killed gc.
`latest-*.json`, unknown names and anything outside `artifacts/` are never touched.

Removal is safe against concurrent runs: a stage directory is removed only while its `.lock`
(and `.readers`) is held exclusively here, and is first renamed to `<name>.gc-<pid>` so a
half-removed directory is never mistaken for a finished stage. All renames happen before any
(slow) deletion, so the reachability snapshot is at most moments old when it is acted on.
When the MLflow store cannot be read, nothing is listed or removed: what is in use is unknown.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt.config.fields import ConfigError
from tasks.locks import pid_alive
from tasks.stage import MANIFEST, PARTIAL_RECORD
from tasks.stages import DEFINITIONS, VERSIONS

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

# Kinds whose partial directory holds checkpoints to resume from.
RESUMABLE_KINDS = frozenset(d.kind for d in DEFINITIONS if d.resumable)
PIPELINE_FILTER = "tags.`gptflow.kind` = 'pipeline'"
PAGE = 1000  # max_results per MLflow search page

# Categories of garbage, in removal order: directories (renamed aside first), files, lock files last.
STAGE, PARTIAL, PULL, REPLACED, LEFTOVER, CORRUPT, LOCK = (
    "stage",
    "partial",
    "pull",
    "replaced",
    "gc-leftover",
    "corrupt",
    "lock",
)
_DIRS = (STAGE, PARTIAL, PULL, REPLACED, LEFTOVER)
# The flock files held exclusively while a directory of each category is renamed aside.
_GUARDS = {STAGE: (".lock", ".readers"), PARTIAL: (".lock",), PULL: (".lock",), REPLACED: (".readers",)}

_LEFTOVER = re.compile(r"^(?P<key>[^.]+)(?:\..+)?\.gc-(?P<pid>\d+)(?:-\d+)?$")
_REPLACED = re.compile(r"^(?P<key>[^.]+)\.replaced-\d+$")
_CORRUPT = re.compile(r"^(?P<key>[^.]+)\..+\.corrupt$")
_LOCKFILE = re.compile(r"^(?P<key>[^.]+)\.(?P<suffix>lock|readers)$")


class GcError(ConfigError):
    """gc cannot tell what is in use (e.g. the MLflow store cannot be read): nothing is removed."""


@dataclass
class Garbage:
    """One removable entry under `artifacts/<kind>/`: a directory or a file, its size and why it can go."""

    path: Path
    kind: str  # the stage kind (the directory under artifacts/)
    what: str  # the entry's name in that directory: a key, `<key>.partial`, a file name
    bytes: int  # total size (files and symlinks, by lstat; symlinks are not followed)
    reason: str
    key: str = ""
    category: str = STAGE  # stage | partial | pull | replaced | gc-leftover | corrupt | lock


@dataclass
class _KindDir:
    """What one `artifacts/<kind>/` holds, by category, before deciding."""

    kind: str
    path: Path
    stages: dict[str, Path] = field(default_factory=dict)
    partials: dict[str, Path] = field(default_factory=dict)
    pulls: dict[str, Path] = field(default_factory=dict)
    replaced: list[tuple[str, Path]] = field(default_factory=list)
    leftovers: list[tuple[str, Path, int]] = field(default_factory=list)
    corrupt: list[tuple[str, Path]] = field(default_factory=list)
    lockfiles: list[tuple[str, Path]] = field(default_factory=list)

    def empty(self) -> bool:
        return not (
            self.stages
            or self.partials
            or self.pulls
            or self.replaced
            or self.leftovers
            or self.corrupt
            or self.lockfiles
        )


def human_bytes(n: float) -> str:
    """A size for people: `0 B`, `512 B`, `1.2 kB`, `3.4 MB`, `1.2 GB` (powers of 1000)."""
    if n < 1000:
        return f"{int(n)} B"
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        n /= 1000
        if n < 1000 or unit == "PB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def entry_bytes(path: Path) -> int:
    """Total size of a file or directory tree: lstat of every non-directory, hard links counted once.

    Symlinks count as themselves and are never followed; entries vanishing meanwhile count 0.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    total, seen = 0, set()
    for root, dirs, files in os.walk(path, followlinks=False):
        for name in (*files, *dirs):
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def is_held(path: Path) -> bool:
    """Whether some process holds a flock (shared or exclusive) on `path`; tested without waiting.

    A missing file is not held; a file that cannot be opened counts as held (keep what is unclear).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the test lock at once
    return False


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _scan(artifacts: Path, kinds: Iterable[str]) -> list[_KindDir]:
    """Classify the entries of each `artifacts/<kind>/` by name; unknown names are left out (never touched)."""
    out = []
    for kind in kinds:
        path = artifacts / kind
        if path.is_symlink():
            log.warning("gc: skipping %s: a symlink (gc never follows symlinks out of the workspace)", path)
            continue
        if not path.is_dir():
            continue
        d = _KindDir(kind, path)
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            name, p = entry.name, Path(entry.path)
            is_dir = entry.is_dir(follow_symlinks=False) or entry.is_symlink()
            if name.startswith("latest-"):
                continue
            if (m := _LEFTOVER.match(name)) and is_dir:
                d.leftovers.append((m["key"], p, int(m["pid"])))
            elif "." not in name and is_dir:
                d.stages[name] = p
            elif name.endswith(".partial") and "." not in name[: -len(".partial")] and is_dir:
                d.partials[name[: -len(".partial")]] = p
            elif name.endswith(".pull") and "." not in name[: -len(".pull")] and is_dir:
                d.pulls[name[: -len(".pull")]] = p
            elif (m := _REPLACED.match(name)) and is_dir:
                d.replaced.append((m["key"], p))
            elif m := _CORRUPT.match(name):
                d.corrupt.append((m["key"], p))
            elif (m := _LOCKFILE.match(name)) and not is_dir:
                d.lockfiles.append((m["key"], p))
        out.append(d)
    return out


def _stage_of(run: Run) -> tuple[str, str] | None:
    tags = run.data.tags
    if tags.get("stage_kind") and tags.get("cache_key"):
        return tags["stage_kind"], tags["cache_key"]
    return None


def _pages(search: Callable[..., Any], **kwargs: Any) -> Iterator[Any]:
    """Every item of a paged MLflow search (PagedList + page_token)."""
    token = None
    while True:
        page = search(page_token=token, **kwargs)
        yield from page
        token = page.token
        if not token:
            return


def mlflow_reachable(client: MlflowClient, keep_runs: int = 5) -> set[tuple[str, str]]:
    """(stage kind, cache key) of the stages MLflow says are in use (rules 1-3 of the module docstring).

    Raises GcError when the store cannot be read: without it, nothing can be removed safely.
    """
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    store_errors = _store_errors()
    keys: set[tuple[str, str]] = set()
    parents: dict[str, str] = {}  # pipeline run id -> its experiment id
    try:
        experiments = list(_pages(client.search_experiments, view_type=ViewType.ALL, max_results=PAGE))
        for exp in experiments:  # 1. the last N pipeline runs of each (active) experiment, any status
            if exp.lifecycle_stage != "active":
                continue
            recent = client.search_runs(
                [exp.experiment_id],
                filter_string=PIPELINE_FILTER,
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=keep_runs,
                order_by=["attributes.start_time DESC"],
            )
            parents.update((r.info.run_id, exp.experiment_id) for r in recent)
        pinned: list[Run] = []  # runs whose own stage, or whose children's stages, are kept
        if experiments:  # 3. running pipelines (and stage runs), deleted or not: their process still reads
            pinned += _pages(
                client.search_runs,
                experiment_ids=[e.experiment_id for e in experiments],
                filter_string="attributes.status = 'RUNNING'",
                run_view_type=ViewType.ALL,
                max_results=PAGE,
            )
        for mv in _pages(client.search_model_versions, max_results=PAGE):  # 2. registered model versions
            if not mv.run_id:
                continue
            try:
                pinned.append(client.get_run(mv.run_id))
            except MlflowException as e:
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
        for run in pinned:
            if stage := _stage_of(run):
                keys.add(stage)
            if run.data.tags.get("gptflow.kind") == "pipeline":
                parents[run.info.run_id] = run.info.experiment_id
        for run_id, exp_id in parents.items():
            children = _pages(
                client.search_runs,
                experiment_ids=[exp_id],
                filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
                run_view_type=ViewType.ALL,
                max_results=PAGE,
            )
            keys.update(s for child in children if (s := _stage_of(child)))
    except store_errors as e:
        raise _unreadable(client.tracking_uri, e) from None
    return keys


def _store_errors() -> tuple[type[BaseException], ...]:
    """What reading an MLflow store raises when the store (not gptflow) is the problem."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    return (MlflowException, SQLAlchemyError, OSError)  # requests' errors are OSErrors


def _unreadable(uri: str, e: BaseException) -> GcError:
    first = (str(e).strip().splitlines() or [""])[0]
    return GcError(f"cannot read the MLflow store {uri}: {type(e).__name__}: {first}; nothing was removed")


def tracking_client(tracking_uri: str) -> MlflowClient | None:
    """An MlflowClient (tracking and registry) on `tracking_uri`, or None when it is a local store
    (SQLite file, file store) that does not exist yet: there are no runs, and reading must not create it.

    Raises GcError when the store is there but cannot be opened (not a database, an older schema).
    """
    from urllib.parse import urlparse

    from mlflow.tracking import MlflowClient

    path: str | None = None
    if tracking_uri.startswith("sqlite:///"):
        path = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
    elif tracking_uri.startswith("file:"):
        path = urlparse(tracking_uri).path
    elif "://" not in tracking_uri and tracking_uri not in ("databricks", "databricks-uc"):
        path = tracking_uri
    if path and not os.path.exists(path):
        return None
    try:
        return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    except _store_errors() as e:  # a SQLite store is opened (and its schema checked) here
        raise _unreadable(tracking_uri, e) from None


def _current_versions() -> dict[str, str]:
    return dict(VERSIONS)


def find_garbage(
    artifacts: Path, client: MlflowClient | None, keep_runs: int = 5, versions: dict[str, str] | None = None
) -> list[Garbage]:
    """Everything under `artifacts/<kind>/` that no run, registered model or live process needs.

    `client` is an MlflowClient on the workspace's store (None: no store, no runs); `keep_runs`
    (>= 1) is how many of each experiment's latest pipeline runs keep their stages; `versions`
    maps kind -> current code version (default: `tasks.plan.VERSIONS`). Reads only; the result
    is sorted by kind, then name. Raises GcError when the MLflow store cannot be read.
    """
    if keep_runs < 1:
        raise ValueError(f"keep_runs must be >= 1, got {keep_runs}")
    versions = _current_versions() if versions is None else versions
    dirs = _scan(artifacts, versions)
    if all(d.empty() for d in dirs):
        return []  # nothing to decide about: MLflow is not asked
    held = {(d.kind, key) for d in dirs for key, p in d.lockfiles if is_held(p)}
    roots = set(held)
    if client is not None:
        roots |= mlflow_reachable(client, keep_runs)

    garbage: list[Garbage] = []
    by_kind = {d.kind: d for d in dirs}
    partial_upstream: list[tuple[str, str]] = []
    for d in dirs:
        for key, path in d.partials.items():
            if (d.kind, key) in held:
                continue
            record = _read_json(path / PARTIAL_RECORD) if (path / PARTIAL_RECORD).exists() else None
            current = versions.get(d.kind)
            if not (path / PARTIAL_RECORD).exists():
                reason = "partial from an older gptflow"
            elif record is None:
                reason = f"partial with an unreadable {PARTIAL_RECORD}"
            elif str(record.get("version")) != current:
                reason = f"partial of {d.kind} version {record.get('version')} (current {current})"
            elif d.kind not in RESUMABLE_KINDS:
                reason = f"partial of {d.kind}, a data stage: a rerun starts it from scratch"
            elif key in d.stages:
                reason = "partial of a finished stage (a forced recompute that did not finish): nothing resumes it"
            else:  # resumable work of the current code: kept, and with it what it reads
                roots.add((d.kind, key))
                upstream = record.get("upstream")
                if isinstance(upstream, dict):
                    partial_upstream += [(str(n).split("[", 1)[0], str(k)) for n, k in upstream.items()]
                continue
            garbage.append(Garbage(path, d.kind, path.name, 0, reason, key, PARTIAL))

    reachable = _closure(roots | set(partial_upstream), by_kind)
    used_by = f"not used by the last {keep_runs} runs of any experiment, a registered model or a running run"
    for d in dirs:
        for key, path in d.stages.items():
            if (d.kind, key) not in reachable:
                garbage.append(Garbage(path, d.kind, key, 0, used_by, key, STAGE))
        for key, path in d.pulls.items():
            if (d.kind, key) not in held:
                garbage.append(Garbage(path, d.kind, path.name, 0, "leftover of an interrupted store pull", key, PULL))
        for key, path in d.replaced:
            if not is_held(d.path / f"{key}.readers"):
                reason = "older copy of a rebuilt stage, no run reads it"
                garbage.append(Garbage(path, d.kind, path.name, 0, reason, key, REPLACED))
        for key, path, pid in d.leftovers:
            if not pid_alive(pid):
                reason = f"leftover of an interrupted gc (pid {pid})"
                garbage.append(Garbage(path, d.kind, path.name, 0, reason, key, LEFTOVER))
        for key, path in d.corrupt:
            garbage.append(Garbage(path, d.kind, path.name, 0, "checkpoint set aside as corrupt", key, CORRUPT))

    going = {g.path for g in garbage}
    for d in dirs:  # lock files of keys with no directory left (none now, or all of them going)
        for key, path in d.lockfiles:
            dirs_of_key = [d.path / key, d.path / f"{key}.partial", d.path / f"{key}.pull"]
            if (d.kind, key) in held or any(os.path.lexists(p) and p not in going for p in dirs_of_key):
                continue
            garbage.append(Garbage(path, d.kind, path.name, 0, "stale lock file: not held, no stage", key, LOCK))

    for g in garbage:
        g.bytes = entry_bytes(g.path)
    order = {kind: i for i, kind in enumerate(versions)}
    garbage.sort(key=lambda g: (order.get(g.kind, len(order)), g.what))
    return garbage


def _closure(roots: set[tuple[str, str]], by_kind: dict[str, _KindDir]) -> set[tuple[str, str]]:
    """`roots` and every stage they read, transitively, through each manifest's "upstream"."""
    seen: set[tuple[str, str]] = set()
    todo = list(roots)
    while todo:
        kind, key = todo.pop()
        if (kind, key) in seen:
            continue
        seen.add((kind, key))
        d = by_kind.get(kind)
        if d is None or key not in d.stages:
            continue
        manifest = _read_json(d.stages[key] / MANIFEST) or {}
        upstream = manifest.get("upstream")
        if isinstance(upstream, dict):
            todo += [(str(name).split("[", 1)[0], str(k)) for name, k in upstream.items()]
    return seen


@contextmanager
def _exclusive(paths: list[Path]) -> Iterator[Path | None]:
    """Hold exclusive flocks on `paths` without waiting; yields the first busy path, or None when all are held here.

    Missing flock files are created (a run arriving meanwhile then waits on ours) and unlinked again
    before they are released.
    """
    fds: list[int] = []
    created: list[Path] = []  # made here and locked here: unlinked before release
    busy = None
    try:
        for path in paths:
            try:
                fd, new = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644), True
            except FileExistsError:
                fd, new = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), False
            fds.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                busy = path
                break
            if new:
                created.append(path)
        yield busy
    finally:
        for path in created:
            path.unlink(missing_ok=True)
        for fd in fds:
            os.close(fd)


def _aside(path: Path) -> Path:
    """A fresh `<name>.gc-<pid>[-n]` beside `path`."""
    target, n = path.with_name(f"{path.name}.gc-{os.getpid()}"), 0
    while os.path.lexists(target):
        n += 1
        target = path.with_name(f"{path.name}.gc-{os.getpid()}-{n}")
    return target


def _delete(path: Path) -> None:
    """Remove a file, a symlink (never its target) or a directory tree (rmtree does not follow symlinks)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


def _move_aside(g: Garbage) -> tuple[Path | None, str]:
    """Rename a directory entry to `<name>.gc-<pid>` under its key's flocks; (None, why) when it must stay."""
    if g.category == LEFTOVER:
        pid = int(_LEFTOVER.match(g.path.name)["pid"])  # type: ignore[index]
        return (None, f"gc process {pid} is running") if pid_alive(pid) else (g.path, "")
    guards = [g.path.parent / f"{g.key}{suffix}" for suffix in _GUARDS[g.category]]
    with _exclusive(guards) as busy:
        if busy is not None:
            return None, f"busy: {busy.name} is held by a running process"
        if not os.path.lexists(g.path):
            return None, "already gone"
        target = _aside(g.path)
        os.rename(g.path, target)
    return target, ""


def _remove_lock_file(g: Garbage) -> str:
    """Unlink a stale flock file while holding it; returns why not ('' when removed)."""
    try:
        fd = os.open(g.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return "already gone"
    except OSError as e:
        return f"could not open it: {e.strerror or e}"
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return f"busy: {g.path.name} is held by a running process"
        parent = g.path.parent
        if any(os.path.lexists(parent / f"{g.key}{s}") for s in ("", ".partial", ".pull")):
            return "its stage exists again"
        try:
            g.path.unlink()
        except OSError as e:
            return f"could not remove it: {e.strerror or e}"
        return ""
    finally:
        os.close(fd)


def remove_garbage(items: list[Garbage], on_skip: Callable[[Garbage, str], None] | None = None) -> tuple[int, int]:
    """Remove `items` (from `find_garbage`); returns (entries removed, bytes freed).

    Directories are first renamed to `<name>.gc-<pid>` while their key's `.lock` (stage, partial,
    pull) and `.readers` (stage, replaced) are held exclusively, without waiting: an entry whose
    lock a process holds now is skipped. Only once every rename is done are the trees deleted, then
    `.corrupt` files, then stale lock files (each unlinked while held, and only if its key still has
    no directory). `on_skip(item, why)` hears about each entry left in place.
    """
    skip = on_skip or (lambda g, why: None)
    removed = freed = 0
    doomed: list[tuple[Garbage, Path]] = []
    for g in items:
        if g.category in _DIRS:
            try:
                target, why = _move_aside(g)
            except OSError as e:  # e.g. a read-only directory: the entry stays, the others go on
                target, why = None, f"could not move it aside: {e.strerror or e}"
            if target is None:
                skip(g, why)
            else:
                doomed.append((g, target))
    for g in items:
        if g.category == CORRUPT:
            doomed.append((g, g.path))
    for g, path in doomed:
        try:
            if not os.path.lexists(path):
                skip(g, "already gone")
                continue
            _delete(path)
        except OSError as e:
            skip(g, f"could not remove {path}: {e.strerror or e}")
            continue
        removed, freed = removed + 1, freed + g.bytes
    for g in items:
        if g.category == LOCK:
            why = _remove_lock_file(g)
            if why:
                skip(g, why)
            else:
                removed, freed = removed + 1, freed + g.bytes
    return removed, freed
