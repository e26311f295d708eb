"""domainbed_align.atomic: a reader sees the old file or folder or the new one, never half of one, and a failed or
killed write leaves the target as it was."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys

import pytest

from domainbed_align import atomic


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if atomic.PARTIAL in p.name]


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "record.json"
    atomic.write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    with pytest.raises(OSError, match="No space left"):
        with atomic.replacing(target) as handle:
            handle.write(b'{"a": 2, "half')
            raise OSError(28, "No space left on device")
    assert json.loads(target.read_text()) == {"a": 1} and _leftovers(tmp_path) == []
    atomic.write_text(target, "new\n")
    assert target.read_text() == "new\n" and _leftovers(tmp_path) == []


def test_a_replaced_file_gets_the_umasks_permissions_not_mkstemps(tmp_path):
    target = tmp_path / "f"
    atomic.write_bytes(target, b"x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


def test_a_folder_appears_complete_or_not_at_all(tmp_path):
    target = tmp_path / "masks"
    with pytest.raises(RuntimeError):
        with atomic.building_folder(target) as building:
            (building / "a.png").write_bytes(b"1")
            raise RuntimeError("killed half-way")
    assert not target.exists() and _leftovers(tmp_path) == []
    with atomic.building_folder(target) as building:
        (building / "sub").mkdir()
        (building / "sub" / "a.png").write_bytes(b"1")
        assert not target.exists()  # nothing under the target's name until it is complete
    assert (target / "sub" / "a.png").read_bytes() == b"1" and _leftovers(tmp_path) == []
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~mask  # not mkdtemp's private 0700


def test_a_non_empty_folder_is_kept_unless_replacing_and_an_empty_one_is_replaced(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    with atomic.building_folder(target) as building:  # empty: taken
        (building / "x").write_text("new")
    with pytest.raises(atomic.FolderExists):
        with atomic.building_folder(target) as building:
            pytest.fail("refused before any work")
    assert (target / "x").read_text() == "new"
    with atomic.building_folder(target, replace=True) as building:
        (building / "y").write_text("newer")
    assert [p.name for p in target.iterdir()] == ["y"] and _leftovers(tmp_path) == []


def test_leftovers_of_a_killed_writer_are_removed_and_a_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    killed = tmp_path / f".masks.partial-{host}-{dead.pid}-abc"
    killed.mkdir()
    (killed / "a.png").write_bytes(b"1")
    alive = tmp_path / f".masks.partial-{host}-{os.getpid()}-def"
    alive.mkdir()
    other_host = tmp_path / f".masks.partial-elsewhere-{dead.pid}-ghi"
    other_host.mkdir()
    assert atomic.remove_leftovers(tmp_path / "masks") == [killed]
    assert alive.exists() and other_host.exists()  # a pid of another host says nothing here


def test_a_replacing_folder_that_cannot_be_moved_in_keeps_the_old_one_and_says_why(tmp_path, monkeypatch):
    target = tmp_path / "carry"
    target.mkdir()
    (target / "old").write_text("old")
    real_replace = os.replace

    def full_disk(src, dst):
        if str(dst) == str(target) and os.path.basename(src) != "previous":
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left") as raised:
        with atomic.building_folder(target, replace=True) as building:
            (building / "new").write_text("new")
    assert not isinstance(raised.value, atomic.FolderExists)  # the real error, not "exists and is not empty"
    assert [p.name for p in target.iterdir()] == ["old"] and _leftovers(tmp_path) == []
