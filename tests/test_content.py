"""tasks.content: sha256 of local files, remembered by (path, size, mtime_ns, inode), and its failure messages."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from tasks import content
from tasks.content import ContentError, DigestCache, check_listing_unchanged


def write_old(path: Path, data: bytes, age_s: float = 60.0) -> Path:
    """Write `data` and set its mtime `age_s` ago, past the racy-clean window, so its digest is remembered."""
    path.write_bytes(data)
    then = time.time_ns() - int(age_s * 1e9)
    os.utime(path, ns=(then, then))
    return path


def test_digest_is_sha256_and_remembered_across_processes(tmp_path):
    data = os.urandom(3 * content.CHUNK + 17)  # several chunks and a partial one
    f = write_old(tmp_path / "a.bin", data)
    memory = tmp_path / "ws" / "digests.json"  # parent created on save
    first = DigestCache(memory)
    assert first.file(f) == hashlib.sha256(data).hexdigest()
    assert (first.stats.files, first.stats.hashed_files, first.stats.hashed_bytes) == (1, 1, len(data))
    first.save()
    saved = json.loads(memory.read_text())["files"]
    st = f.stat()
    assert saved == {
        str(f.resolve()): {
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "ino": st.st_ino,
            "ctime_ns": st.st_ctime_ns,
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    }

    second = DigestCache(memory)  # a new process reading the saved memory
    assert second.file(f) == hashlib.sha256(data).hexdigest()
    assert (second.stats.files, second.stats.hashed_files, second.stats.remembered_files) == (1, 0, 1)
    assert second.stats.seconds >= 0
    # in-process memo too, without a memory file
    local = DigestCache(None)
    local.file(f)
    local.file(f)
    assert (local.stats.hashed_files, local.stats.remembered_files) == (1, 1)
    local.save()  # no-op


def test_save_is_noop_when_nothing_changed_and_keeps_other_entries(tmp_path):
    a = write_old(tmp_path / "a.txt", b"a")
    b = write_old(tmp_path / "b.txt", b"b")
    memory = tmp_path / "digests.json"
    cache = DigestCache(memory)
    cache.file(a)
    cache.save()
    mtime = memory.stat().st_mtime_ns
    DigestCache(memory).save()  # nothing read
    remembered = DigestCache(memory)
    remembered.file(a)
    remembered.save()  # nothing new
    assert memory.stat().st_mtime_ns == mtime
    other = DigestCache(memory)
    other.file(b)
    other.save()
    assert set(json.loads(memory.read_text())["files"]) == {str(a.resolve()), str(b.resolve())}
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_edit_with_same_size_gives_new_digest(tmp_path):
    f = write_old(tmp_path / "a.txt", b"hello world", age_s=120)
    memory = tmp_path / "digests.json"
    cache = DigestCache(memory)
    old = cache.file(f)
    cache.save()
    write_old(f, b"HELLO WORLD", age_s=60)  # same size, same inode, new mtime
    again = DigestCache(memory)
    assert again.file(f) == hashlib.sha256(b"HELLO WORLD").hexdigest() != old
    assert again.stats.hashed_files == 1


def test_replaced_file_with_forced_same_size_and_mtime_gives_new_digest(tmp_path):
    f = write_old(tmp_path / "a.txt", b"version one")
    st = f.stat()
    memory = tmp_path / "digests.json"
    cache = DigestCache(memory)
    old = cache.file(f)
    cache.save()
    keep = tmp_path / "keep.txt"
    os.link(f, keep)  # hold the old inode so the new file cannot reuse its number
    new = tmp_path / "new.txt"
    new.write_bytes(b"version two")
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, f)
    assert (f.stat().st_size, f.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert f.stat().st_ino != st.st_ino
    again = DigestCache(memory)
    assert again.file(f) == hashlib.sha256(b"version two").hexdigest() != old
    assert again.stats.remembered_files == 0


def test_racy_clean_file_is_not_remembered(tmp_path):
    f = tmp_path / "fresh.txt"
    f.write_bytes(b"just written")
    now = time.time_ns()
    os.utime(f, ns=(now, now))
    memory = tmp_path / "digests.json"
    cache = DigestCache(memory)
    cache.file(f)
    cache.file(f)
    assert (cache.stats.hashed_files, cache.stats.remembered_files) == (2, 0)
    cache.save()
    assert not memory.exists()  # nothing worth saving
    later = DigestCache(memory)
    later.file(f)
    assert later.stats.hashed_files == 1


def test_missing_and_non_regular_files(tmp_path):
    with pytest.raises(ContentError, match=r"gone\.txt: not found"):
        DigestCache(None).file(tmp_path / "gone.txt")
    with pytest.raises(ContentError, match="not a regular file"):
        DigestCache(None).file(tmp_path)


def test_unreadable_file_names_it(tmp_path, monkeypatch):
    f = write_old(tmp_path / "secret.txt", b"x")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        f.chmod(0)
        try:
            with pytest.raises(ContentError, match=r"secret\.txt: cannot read it \(Permission denied\)"):
                DigestCache(None).file(f)
        finally:
            f.chmod(0o644)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(args[0]))

    monkeypatch.setattr(content, "open", denied, raising=False)  # root can read anything
    with pytest.raises(ContentError, match=r"secret\.txt: cannot read it \(Permission denied\)"):
        DigestCache(None).file(f)
    with pytest.raises(ContentError, match=r"^corpus\.source=data: .*secret\.txt: cannot read it"):
        DigestCache(None).files([f], "corpus.source=data")


def test_file_changed_while_hashed_names_it(tmp_path, monkeypatch):
    f = write_old(tmp_path / "growing.log", b"line\n" * 1000)
    real = content._hash_open_file

    def appending(fh):
        result = real(fh)
        with open(f, "ab") as w:  # another process appends while we read
            w.write(b"more\n")
        return result

    monkeypatch.setattr(content, "_hash_open_file", appending)
    memory = tmp_path / "digests.json"
    cache = DigestCache(memory)
    with pytest.raises(ContentError, match=r"growing\.log: changed while it was being hashed; run again"):
        cache.file(f)
    with pytest.raises(ContentError, match=r"^my-folder: .*growing\.log: changed while it was being hashed"):
        cache.files([f], "my-folder")
    cache.save()
    assert not memory.exists()  # nothing remembered for it


def test_file_vanished_while_hashed_names_it(tmp_path, monkeypatch):
    f = write_old(tmp_path / "temp.txt", b"data")
    real = content._hash_open_file

    def deleting(fh):
        f.unlink()
        return real(fh)

    monkeypatch.setattr(content, "_hash_open_file", deleting)
    with pytest.raises(ContentError, match=r"^src: .*temp\.txt: changed while it was being hashed"):
        DigestCache(None).files([f], "src")


def test_files_keys_are_paths_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    write_old(tmp_path / "d" / "x.txt", b"x")
    write_old(tmp_path / "d" / "y.txt", b"y")
    given = [Path("d/x.txt"), Path("d/y.txt")]
    assert DigestCache(None).files(given, "d") == {
        "d/x.txt": hashlib.sha256(b"x").hexdigest(),
        "d/y.txt": hashlib.sha256(b"y").hexdigest(),
    }


def test_check_listing_unchanged(tmp_path):
    a, b, c = (tmp_path / n for n in ("a", "b", "c"))
    check_listing_unchanged([a, b], [b, a], "data/")
    with pytest.raises(ContentError, match=r"^data/: files were added or removed while it was being hashed \(added "):
        check_listing_unchanged([a, b], [a, b, c], "data/")
    with pytest.raises(ContentError, match=r"data/: .*\(removed .*/b\)$"):
        check_listing_unchanged([a, b], [a], "data/")
    with pytest.raises(ContentError, match=r"data/: .*\(added .*/c and 2 more\)$"):
        check_listing_unchanged([a, b], [c], "data/")


@pytest.mark.parametrize(
    "text", ["{not json", "[1, 2]", '{"format": 99, "files": {}}', '{"format": 1, "files": {"x": 3}}', "\x00\xff"]
)
def test_corrupt_memory_is_tolerated(tmp_path, text):
    f = write_old(tmp_path / "a.txt", b"abc")
    memory = tmp_path / "digests.json"
    memory.write_text(text, encoding="latin-1")
    cache = DigestCache(memory)
    assert cache.file(f) == hashlib.sha256(b"abc").hexdigest()
    cache.save()  # replaced by a valid memory
    assert DigestCache(memory).file(f) == hashlib.sha256(b"abc").hexdigest()


def test_tampered_entry_is_not_trusted_blindly(tmp_path):
    f = write_old(tmp_path / "a.txt", b"abc")
    memory = tmp_path / "digests.json"
    cache = DigestCache(memory)
    cache.file(f)
    cache.save()
    data = json.loads(memory.read_text())
    data["files"][str(f.resolve())]["mtime_ns"] += 1  # stale signature: hash again
    memory.write_text(json.dumps(data))
    again = DigestCache(memory)
    again.file(f)
    assert again.stats.hashed_files == 1


def test_unwritable_memory_is_skipped_silently(tmp_path, monkeypatch):
    f = write_old(tmp_path / "a.txt", b"abc")
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("")
    cache = DigestCache(blocker / "digests.json")  # its parent cannot be created
    cache.file(f)
    cache.save()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    memory = tmp_path / "digests.json"
    cache = DigestCache(memory)
    cache.file(f)
    monkeypatch.setattr(content.os, "fsync", full)
    cache.save()
    assert not memory.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_an_in_place_rewrite_that_restores_the_mtime_is_seen(tmp_path):
    """`rsync --inplace -t` keeps size, mtime and inode; the changed ctime still gives it away."""
    f = write_old(tmp_path / "a.txt", b"abc")
    memory = tmp_path / "digests.json"
    first = DigestCache(memory)
    old = first.file(f)
    first.save()
    st = f.stat()
    time.sleep(0.01)
    with open(f, "r+b") as handle:  # same inode, same size
        handle.write(b"abd")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # the mtime put back
    assert f.stat().st_mtime_ns == st.st_mtime_ns and f.stat().st_ino == st.st_ino
    assert DigestCache(memory).file(f) == hashlib.sha256(b"abd").hexdigest() != old
