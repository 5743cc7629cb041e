"""Locks that give a run directory, or an output folder, to one process at a time.

A second `nowcast-train` in a run directory that another process trains in would continue from
a backup the first is about to replace, and truncate the metrics log the first appends to; a
second evaluation writing the same output folder would compute for nothing, and with
`overwrite=true` swap folders under the first. So these commands hold a lock for as long as
they write, and a process that finds it held stops at once, in one line that names the holder.

A lock is an exclusive `flock(2)` on a small file (`.lock` in a run directory, `.<name>.lock`
beside an output folder). The kernel drops it when its process ends, however it ends, so a run
killed with SIGKILL can be resumed at once: there is no stale lock to clean. The file holds the
holder's pid, host and command, for the message of whoever is refused; the holder removes it
when done, and a file left by a killed process is taken over by the next one. On NFS the lock
holds across hosts too; on a file system without `flock` (Lustre mounted without `-o flock`) a
warning says so and the command runs unlocked.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

RUN_LOCK = ".lock"
# Lock file -> [file descriptor, how many holds]: this process's locks. A process may take a
# lock it holds again (the training command locks its run directory before Hydra writes into
# it, then `train` locks it as any caller does); flock would refuse it a second descriptor.
_held: dict[Path, list[int]] = {}


class LockedError(RuntimeError):
    """Another process holds the lock."""


def run_lock(run_dir: Path) -> contextlib.AbstractContextManager[None]:
    """The lock of a training run directory, held by `nowcast-train` for its whole life."""
    return locked(
        run_dir / RUN_LOCK,
        target=run_dir,
        command="nowcast-train",
        alternative="choose another hydra.run.dir",
    )


def output_lock(
    output: Path, *, command: str, alternative: str
) -> contextlib.AbstractContextManager[None]:
    """The lock of an output folder or file, `.<name>.lock` beside it (the output itself is
    replaced whole when written, so the lock cannot be inside it); its folder is created."""
    output.parent.mkdir(parents=True, exist_ok=True)
    return locked(
        output.with_name(f".{output.name}.lock"),
        target=output,
        command=command,
        alternative=alternative,
    )


@contextlib.contextmanager
def locked(lock_file: Path, *, target: Path, command: str, alternative: str) -> Iterator[None]:
    """Hold the lock `lock_file` for the block (see the module docstring).

    Args:
        lock_file: the lock file; its folder must exist.
        target: what the lock protects, for the message.
        command: what this process is, for the message of a process that is refused.
        alternative: what a refused user can do instead of waiting, for the message.

    Raises:
        LockedError: another process holds the lock; the message names `target`, the holder's
            command, pid and host, and `alternative`.
    """
    lock_file = Path(os.path.realpath(lock_file))
    if lock_file in _held:
        _held[lock_file][1] += 1
    else:
        fd = _acquire(lock_file, target=target, command=command, alternative=alternative)
        if fd is None:
            yield
            return
        _held[lock_file] = [fd, 1]
    try:
        yield
    finally:
        _held[lock_file][1] -= 1
        if not _held[lock_file][1]:
            fd, _ = _held.pop(lock_file)
            # Removed while still locked: a process that opened the file meanwhile finds,
            # once it has the lock, that the file is no longer there, and starts again.
            lock_file.unlink(missing_ok=True)
            os.close(fd)


def _acquire(lock_file: Path, *, target: Path, command: str, alternative: str) -> int | None:
    """The locked file descriptor of `lock_file`, or None where the file system has no locks."""
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise LockedError(
                f"{target} is in use by {holder}; wait for it to end, or {alternative}"
            ) from None
        except OSError as err:
            os.close(fd)
            log.warning(
                "could not lock %s (%s): nothing stops another process from using %s meanwhile",
                lock_file,
                err.strerror,
                target,
            )
            return None
        # The previous holder may have removed the file between our open and our lock.
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(lock_file)):
                break
        os.close(fd)
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    return fd


def _holder(fd: int) -> str:
    """Who holds the lock on `fd`, as its file says: `nowcast-train (pid 4242 on host node7)`."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
        return f"{holder['command']} (pid {holder['pid']} on host {holder['host']})"
    except (ValueError, KeyError, TypeError):  # not written yet: the holder has just locked it
        return "another process"
