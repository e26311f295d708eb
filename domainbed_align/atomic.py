"""Writes a later reader trusts, made atomic: a reader sees the old file (or folder) or the new one, never half.

Everything is built under a temporary name beside its target (same folder, so same file system: the rename is
atomic), flushed to disk (``fsync``), then renamed over the target with ``os.replace``; the folder holding it is
``fsync``-ed too, so the rename itself survives a crash. A failed or interrupted write leaves the target as it was.

    atomic.write_bytes(path, data)                  # also write_text, write_json
    with atomic.replacing(path) as handle: ...      # a file written through a handle (torch.save, json.dump, ...)
    with atomic.building_folder(target) as tmp: ... # a folder filled in ``tmp``, renamed to ``target`` at the end

Temporary names start with ``.<target name>.partial-<host>-<pid>-``: :func:`remove_leftovers` removes those of
processes of this host that are gone (a write killed with ``kill -9`` cannot clean up after itself).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

PARTIAL = ".partial-"


def _prefix(target: Path) -> str:
    # the host too: on a shared file system another host's pid says nothing about a process here
    return f".{target.name}{PARTIAL}{socket.gethostname()}-{os.getpid()}-"


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make a rename or a new entry in ``folder`` durable (best effort: some file systems cannot open folders)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:  # e.g. EINVAL on file systems without directory fsync: nothing more can be done
        pass
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def replacing(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """A handle on a temporary file beside ``path``; on a clean exit it is fsync-ed and renamed to ``path``. On an
    exception it is removed and ``path`` is untouched."""
    if mode not in ("w", "wb"):
        raise ValueError(f"replacing() writes a whole file: mode 'w' or 'wb', not {mode!r}")
    target = Path(path)
    remove_leftovers(target)
    descriptor, partial = tempfile.mkstemp(prefix=_prefix(target), dir=target.parent)
    try:
        with os.fdopen(descriptor, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(partial, 0o666 & ~_umask())  # mkstemp's 0600 would make the result private
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    fsync_folder(target.parent)


def _umask() -> int:
    """The process's umask, read without setting it (os.umask would change it for every thread meanwhile)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with replacing(path, "wb") as handle:
        handle.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, value: Any, **dumps: Any) -> None:
    """``json.dumps(value, **dumps)`` plus a final newline, atomically."""
    write_text(path, json.dumps(value, **dumps) + "\n")


def _fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            descriptor = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        fsync_folder(root)


class FolderExists(FileExistsError):
    """The target of :func:`building_folder` exists and is not empty (``replace=False``)."""


@contextlib.contextmanager
def building_folder(target: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """A fresh temporary folder beside ``target`` to fill; on a clean exit everything in it is fsync-ed and it is
    renamed to ``target``. An empty ``target`` is replaced; a non-empty one raises :class:`FolderExists` unless
    ``replace`` (then the old folder is moved aside first and removed only once the new one is in place). On an
    exception, or a kill, ``target`` is untouched."""
    target = Path(target)
    if not replace and _non_empty(target):  # before the work, not after it
        raise FolderExists(f"{target} exists and is not empty")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(target), dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would make the folder private
        _fsync_tree(tmp)
        old = None
        if target.exists() and replace:
            old = Path(tempfile.mkdtemp(prefix=_prefix(target) + "old-", dir=target.parent))
            os.replace(target, old / "previous")
        try:
            os.replace(tmp, target)  # an empty folder is replaced; a non-empty one is ENOTEMPTY/EEXIST
        except OSError as error:
            if old is not None:  # put the previous folder back: the caller's error (e.g. ENOSPC) is the real one
                os.replace(old / "previous", target)
                shutil.rmtree(old, ignore_errors=True)
                raise
            if _non_empty(target):
                raise FolderExists(f"{target} exists and is not empty") from error
            raise
        fsync_folder(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _non_empty(path: Path) -> bool:
    if not path.is_dir():
        return path.exists()  # a file in the way counts as taken
    return any(path.iterdir())


def remove_leftovers(target: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders of writes to ``target`` that a process of this host, now gone, left
    (a ``kill -9`` mid-write); returns what was removed."""
    target = Path(target)
    prefix = f".{target.name}{PARTIAL}{socket.gethostname()}-"
    removed = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        pid = entry.name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or process_alive(int(pid)):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry)
    return removed


def process_alive(pid: object) -> bool:
    """Whether process ``pid`` of this host is alive (another user's counts; a zombie, exited but not yet reaped,
    does not). The one such check: :mod:`domainbed_align.runs.liveness` uses it too (it lives here, the lower layer,
    because a write's leftovers are judged by it)."""
    if not isinstance(pid, int) or pid <= 0:  # os.kill(-1, 0) would ask about every process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    try:  # a zombie (exited, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
