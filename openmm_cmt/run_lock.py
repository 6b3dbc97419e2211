"""One writer per run folder: an advisory lock held while a process writes a run.

``hold_run_lock(folder)`` takes an exclusive ``fcntl.flock`` on ``folder/.lock`` and
writes the holder's process id into it. A second process asking for the same lock fails
at once with :class:`RunLockedError` naming that process. The lock goes with its holder:
the kernel releases it when the process exits, however it exits, so a crash never leaves
a stale lock behind. Within one process the lock is re-entrant (training holds it for the
whole run, and each save inside takes it again).

On platforms without ``fcntl`` (Windows) no lock is taken.
"""

from __future__ import annotations

import contextlib
import os
import threading

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = ".lock"


class RunLockedError(RuntimeError):
    """Another process is writing the run folder."""


_held: dict[str, list] = {}  # real path of the lock file -> [fd, depth]
_guard = threading.Lock()


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text.split()[0] if text else "unknown"


def _acquire(path: str, folder: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _holder(fd)
        os.close(fd)
        raise RunLockedError(
            f"{folder} is being written by process {pid} (lock {path}); wait for it to end or choose another folder"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
    except BaseException:
        os.close(fd)  # closing releases the lock
        raise
    return fd


@contextlib.contextmanager
def hold_run_lock(folder):
    """Hold the writer's lock of ``folder`` (created if missing) for the ``with`` block.

    Raises
    ------
    RunLockedError
        When another process holds it.
    OSError
        When the folder cannot be created or written (the lock doubles as a test write).
    """
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    if fcntl is None:
        yield
        return
    path = os.path.realpath(os.path.join(folder, LOCK_FILE))
    with _guard:
        entry = _held.get(path)
        if entry is None:
            entry = _held[path] = [_acquire(path, folder), 0]
        entry[1] += 1
    try:
        yield
    finally:
        with _guard:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[path]
                os.close(entry[0])  # releases the flock
