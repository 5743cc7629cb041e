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

A folder of outputs (an evaluation) is written whole under a temporary name and put in place
of the old one in one rename (`publish_folder`). A command that refuses to replace files
checks them all before it starts (`refuse_existing`), and gives a file that appears meanwhile
the same error (`refusing_existing`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
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


def publish_folder(output_dir: Path, write: Callable[[Path], None]) -> None:
    """Run `write(folder)` on a temporary folder, then put it in place of `output_dir`."""
    pid = os.getpid()
    tmp = output_dir.with_name(f".{output_dir.name}.tmp-{pid}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if output_dir.exists():
        old = output_dir.with_name(f".{output_dir.name}.old-{pid}")
        output_dir.rename(old)
        tmp.rename(output_dir)
        shutil.rmtree(old)
    else:
        tmp.rename(output_dir)


def file_stamp(seconds: int) -> str:
    """A UTC time for file names: 20240601T1200Z."""
    return f"{datetime.fromtimestamp(int(seconds), tz=timezone.utc):%Y%m%dT%H%MZ}"


def refuse_existing(paths: list[Path], overwrite: bool, hint: str) -> None:
    """A FileExistsError naming those of `paths` that exist, unless `overwrite`."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise _exists_error(existing, hint)


@contextlib.contextmanager
def refusing_existing(hint: str) -> Iterator[None]:
    """Give a file that another process published between `refuse_existing`'s check and this
    block's write (the FileExistsError of `nowcast.io.publish_new`, which names it) the error
    that the check would have given."""
    try:
        yield
    except FileExistsError as err:
        raise _exists_error([err.filename], hint) from None


def _exists_error(paths: list[str], hint: str) -> FileExistsError:
    return FileExistsError(f"{', '.join(paths)} exists; pass overwrite=true or {hint}")
