"""A change to a stage's code must come with a version bump, or be recorded on purpose (tasks/stage_lock.py)."""

import ast
import copy

from tasks import stage_lock


def test_every_stage_kind_matches_its_locked_code():
    found = stage_lock.problems()
    assert not found, "\n".join(found)


def test_a_code_change_under_the_same_version_is_caught(monkeypatch):
    lock = copy.deepcopy(stage_lock.locked())
    lock["pretrain"]["modules"]["gpt/train/pretrain.py"] = "0" * 16  # as if gpt/train/pretrain.py changed since
    lock["finetune"]["modules"]["gpt/train/pretrain.py"] = "0" * 16
    monkeypatch.setattr(stage_lock, "locked", lambda: lock)
    found = stage_lock.problems()
    assert len(found) == 2 and all("gpt/train/pretrain.py" in line and "bump its version" in line for line in found)
    assert {line.split("'")[1] for line in found} == {"pretrain", "finetune"}


def test_a_version_bump_must_be_recorded(monkeypatch):
    lock = copy.deepcopy(stage_lock.locked())
    lock["encode"]["version"] = "1"
    monkeypatch.setattr(stage_lock, "locked", lambda: lock)
    assert stage_lock.problems() == ["stage 'encode': version 1 -> 2 is not recorded in the lock"]


def test_docstrings_and_comments_do_not_count_but_code_does():
    a = 'def f(x):\n    """Doc."""\n    return x + 1  # one\n'
    b = "def f(x):\n    # another comment\n    return x + 1\n"
    c = "def f(x):\n    return x + 2\n"
    norm = [stage_lock._normalized(ast.parse(src)) for src in (a, b, c)]
    assert norm[0] == norm[1] != norm[2]


def test_imports_inside_functions_are_followed():
    modules = stage_lock.module_digests("tasks.pretrain")
    assert "gpt/train/pretrain.py" in modules and "gpt/model/transformer.py" in modules  # imported inside train()
    assert not any(m.startswith("flows/") for m in modules)
