"""Durable, atomic file replacement: readers see the old file or the new one, never a part.

Every file this package writes whole for others to read (trace files, the golden file, an
exported trace) goes through ``atomic_write``, so there is one way to do it right.
``atomic_write`` writes a temp file in the target's directory, fsyncs it, makes it 0644,
renames it over the target and fsyncs the directory (the rename is durable only then, on
POSIX).  A writer killed in between leaves its temp file behind; the next write to the
directory removes such leftovers of YAML files (traces and golden files, which directories
full of them collect): a temp file of a process of this host that no longer runs,
or any temp file older than ``STALE_SECONDS`` (a write takes milliseconds, so that one was
abandoned too).  Temp files of writers still at work (other xdist workers, other machines on
a shared directory) are left alone.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["STALE_SECONDS", "atomic_write", "fsync_dir", "remove_stale_temps"]

STALE_SECONDS = 60.0
# .<name>.yaml.<host>-<pid>.<random>.tmp (this module's) or .<name>.yaml.<random>.tmp (older writers)
_TEMP = re.compile(r"\A\..+\.ya?ml\.(?:(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.)?[^.]+\.tmp\Z")


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


_HOST = _host()


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if sys.platform == "win32":  # os.kill(pid, 0) would terminate it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it runs, as someone else
        return True
    return True


def remove_stale_temps(directory: Path, *, now: float | None = None) -> list[Path]:
    """Remove the temp files interrupted writes left in ``directory``; returns them."""
    removed: list[Path] = []
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            stale = now - entry.stat(follow_symlinks=False).st_mtime > STALE_SECONDS
            if not stale and match.group("host") == _HOST:
                stale = not _running(int(match.group("pid")))
            if stale:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue  # another writer removed or renamed it meanwhile
    return removed


def atomic_write(target: Path, data: bytes) -> None:
    """Replace ``target`` with ``data`` so readers see the old file or the new one, never a part."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target.parent)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{_HOST}-{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; traces and golden files are meant to be shared
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(target.parent)


def fsync_dir(directory: Path) -> None:
    # The rename itself is durable only once the directory is synced (POSIX); Windows has no such call.
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

