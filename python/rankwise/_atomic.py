"""Atomic output folders: write into a temp folder beside the target, then rename.

A failed or interrupted write never leaves a half-written target: either the old target (or
nothing) is there, or the complete new one. Temp folders are named ``.<target>.rankwise-tmp-*``
beside the target; stale ones from a killed run are removed by the next write to that target.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputExistsError, RankwiseError

_TMP_TAG = ".rankwise-tmp-"


def _clear_stale(target: Path) -> None:
    for p in target.parent.glob(f".{target.name}{_TMP_TAG}*"):
        shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty temp folder; on success it becomes ``target``.

    ``target`` may not exist yet or be an empty folder; a non-empty one is refused
    (``OutputExistsError``) unless ``overwrite``, in which case it is replaced only after the new
    content is complete. On any exception the temp folder is removed and the target is untouched.
    """
    target = Path(target).absolute()
    if target.exists():
        if not target.is_dir():
            raise OutputExistsError(f"{target}: exists and is not a folder")
        if any(target.iterdir()) and not overwrite:
            raise OutputExistsError(
                f"{target}: folder is not empty; pass overwrite=True (CLI: --overwrite) to replace it"
            )
    parent = target.parent
    blocker = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise RankwiseError(f"{target}: cannot create the output folder: {blocker} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _clear_stale(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}{_TMP_TAG}", dir=parent))
    except OSError as e:
        raise RankwiseError(f"{target}: cannot create the output folder: {e.strerror or e}") from e
    try:
        yield tmp
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)
        if target.exists():
            # Move the old folder aside first, so that a crash between the two renames leaves
            # the old content recoverable rather than lost.
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}{_TMP_TAG}old-", dir=parent))
            os.rename(target, old / "prev")
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
        with contextlib.suppress(OSError):
            fd = os.open(parent, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temp file path beside ``target``; on success it is fsynced and renamed onto
    ``target``. An existing ``target`` is refused (``OutputExistsError``) unless ``overwrite``."""
    target = Path(target).absolute()
    if target.exists() and (target.is_dir() or not overwrite):
        what = "is a folder" if target.is_dir() else "exists; pass overwrite=True (CLI: --overwrite) to replace it"
        raise OutputExistsError(f"{target}: {what}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}{_TMP_TAG}", dir=target.parent)
        os.close(fd)
    except OSError as e:
        raise RankwiseError(f"{target}: cannot create the output file: {e.strerror or e}") from e
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
