"""One writer per run directory: RUN_DIR/.lock, held with `fcntl.flock` for the life of a training process.

The kernel drops a flock when its process dies, so a lock left by a killed process is free to take; the
file still names that process (pid and host), which is how we can warn that we took it over.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import sys
from pathlib import Path

LOCK_NAME = ".lock"


class RunLockedError(ValueError):
    """Another process is writing the run directory."""


class RunLock:
    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.file = None
        self.created = False  # the directory did not exist before: an aborted start removes it again

    def acquire(self) -> "RunLock":
        self.created = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = _describe(file.read())
            file.close()
            raise RunLockedError(f"{self.run_dir}: {holder} is training in this run directory; wait for it to "
                                 f"finish or stop it (the lock is {self.path})") from None
        file.seek(0)
        previous = file.read().strip()
        if previous:  # released locks are emptied, so this holder died while holding it
            print(f"warning: {self.path}: taking over the lock of {_describe(previous)}, which is no longer running",
                  file=sys.stderr)
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()} {socket.gethostname()}\n")
        file.flush()
        self.file = file
        return self

    def release(self, discard: bool = False) -> None:
        """Unlock; with `discard`, remove the run directory if this lock created it (a start that failed
        before the run wrote anything of its own)."""
        if self.file is None:
            return
        if discard and self.created:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        else:
            self.file.seek(0)
            self.file.truncate()
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()
        self.file = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _describe(holder: str) -> str:
    parts = holder.split()
    if len(parts) == 2:
        return f"process {parts[0]} on host {parts[1]}"
    return "another process"
