"""Writing files so that a crash never leaves a half-written file under the real name.

Every file nowcast writes goes first to a hidden temporary name beside the target (same folder,
so the final rename is atomic; same ending, so writers that choose the format by the suffix,
such as Keras, write the same format) and is renamed into place once complete. A process killed
at any moment leaves either the previous file or the new one, plus at worst a `.tmp-*` file,
which `remove_temporary_files` clears when the next run starts in that folder.

A file that must not replace an existing one (`overwrite=false`) is published with
`publish_new`, in which the check that the target does not exist and the publication are one
step: of two processes writing the same new file at once, one succeeds and the other gets
FileExistsError, and the file is the first one's, whole.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

TEMPORARY_PREFIX = ".tmp-"


def temporary_path(path: str | os.PathLike) -> Path:
    """The hidden name beside `path` that this process writes it under: `.tmp-<pid>-<name>`."""
    path = Path(path)
    return path.with_name(f"{TEMPORARY_PREFIX}{os.getpid()}-{path.name}")


def publish(temporary: Path, path: Path) -> None:
    """Flush `temporary` to disk and rename it to `path` (replacing any file there)."""
    with open(temporary, "rb+") as file:
        os.fsync(file.fileno())
    os.replace(temporary, path)


def publish_new(temporary: Path, path: Path) -> None:
    """Flush `temporary` to disk and give it the name `path`, unless something is there.

    Raises:
        FileExistsError: `path` exists (`filename` is `path`); it is left as it is, and so is
            `temporary`.
    """
    with open(temporary, "rb+") as file:
        os.fsync(file.fileno())
    try:
        # A hard link fails if the name exists: the check and the publication in one step.
        os.link(temporary, path)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
    except OSError:
        # No hard links on this file system (FAT, some network shares): claim the name with an
        # empty file, which fails if it exists, and rename over the claim.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        os.replace(temporary, path)
        return
    temporary.unlink()


@contextlib.contextmanager
def written_atomically(path: str | os.PathLike, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; it becomes `path` when the block ends without error and
    is deleted otherwise. With `replace=False`, FileExistsError if `path` exists by then
    (`publish_new`).

    Example::

        with written_atomically(run_dir / "model.keras") as temporary:
            model.save(temporary)
    """
    path = Path(path)
    temporary = temporary_path(path)
    try:
        yield temporary
        (publish if replace else publish_new)(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """`Path(path).write_text(text)`, through a temporary file."""
    with written_atomically(path) as temporary:
        temporary.write_text(text)


def remove_temporary_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that interrupted writers left in `folder`; returns them.

    Only for a folder that no other process is writing to.
    """
    leftovers = sorted(Path(folder).glob(f"{TEMPORARY_PREFIX}*"))
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers
