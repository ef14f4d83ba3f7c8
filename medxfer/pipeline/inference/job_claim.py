"""One job at a time on one output: an exclusive lock on the job's parts folder.

Two ``medxfer predict`` commands started on the same ``--out`` would otherwise both check the
earlier settings, both write parts and both merge, leaving one CSV whose labels disagree with its
sidecar. The first job takes an exclusive ``flock`` on ``<parts>/lock`` before it checks or
writes anything and holds it to the end; a second job finds the lock taken and stops with a clear
message. The kernel releases the lock when its holder exits, however it exits (``kill -9``
included), so a rerun after a crash takes over at once: there is no stale lock to clear. A lock
file is only removed by its holder, and a job that locked a file just removed locks the new one.
On a network file system the lock is as good as the file system's own locking (NFSv4 supports
it; some SMB mounts do not).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

LOCK_FILE = "lock"


class JobClaimedError(ValueError):
    """Another job holds the output."""


class JobClaim:
    """The exclusive claim on ``folder`` (created if missing); ``acquire`` raises
    ``JobClaimedError`` when another process holds it. ``what`` names the output in messages."""

    def __init__(self, folder: Path, what: str) -> None:
        self.folder, self.what = folder, what
        self._fd: int | None = None

    def acquire(self) -> JobClaim:
        while True:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode("ascii", "replace").strip()
                os.close(fd)
                raise JobClaimedError(
                    f"another job is writing {self.what} ({holder or 'its process is still running'}): wait for it "
                    "to finish, or write to another --out") from None
            if self._still_linked(fd):
                break
            os.close(fd)  # the holder removed the lock file as we locked it: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode("ascii"))
        self._fd = fd
        return self

    def _still_linked(self, fd: int) -> bool:
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.folder / LOCK_FILE))
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Give the claim up; a folder that holds nothing but the lock (a job refused before it
        wrote anything) is removed first, while the lock is still held."""
        if self._fd is None:
            return
        try:
            if [p.name for p in self.folder.iterdir()] == [LOCK_FILE]:
                (self.folder / LOCK_FILE).unlink()
                self.folder.rmdir()
        except OSError:
            pass  # left in place: harmless, the next job locks it again
        finally:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
