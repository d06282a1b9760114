"""Atomic output folders: write into a temp folder beside the target, then rename.

A failed or interrupted write never leaves a half-written target: either the old target (or
nothing) is there, or the complete new one. Temp folders are named
``.<target>.rankwise-tmp-<pid>-<random>`` beside the target; the next write to that target
removes those of processes that are gone (never another live writer's). An output may never be
one of the write's inputs, inside one or contain one (``check_disjoint``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import OutputExistsError, OutputWriteError, RankwiseError

_TMP_TAG = ".rankwise-tmp-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's live process, or not a pid we can judge: keep it
    return True


def _clear_stale(target: Path) -> None:
    for p in target.parent.glob(f".{target.name}{_TMP_TAG}*"):
        pid = p.name[len(f".{target.name}{_TMP_TAG}") :].removeprefix("old-").split("-", 1)[0]
        if pid.isdigit() and (int(pid) == os.getpid() or _pid_alive(int(pid))):
            continue
        shutil.rmtree(p, ignore_errors=True)


def check_disjoint(target: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]]) -> None:
    """Refuses (``OutputExistsError``) an output folder that is an input, lies inside one or
    contains one, comparing real paths (symlinks resolved): writing it would replace the input."""
    out = Path(os.path.realpath(target))
    for i in inputs:
        src = Path(os.path.realpath(i))
        if out == src or src in out.parents or out in src.parents:
            rel = "is" if out == src else "is inside" if src in out.parents else "contains"
            raise OutputExistsError(
                f"{target}: the output folder {rel} the input {i}; writing it would destroy "
                "an input: choose an output folder outside every input"
            )


def check_target(
    target: str | os.PathLike[str], *, overwrite: bool = False, inputs: Iterable[str | os.PathLike[str]] = ()
) -> Path:
    """Everything ``atomic_dir`` refuses about ``target``, checked without writing (callers run it
    before long work too); the absolute target."""
    check_disjoint(target, inputs)
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
    return target


@contextlib.contextmanager
def atomic_dir(
    target: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Iterator[Path]:
    """Yields an empty temp folder; on success it becomes ``target``.

    ``target`` may not exist yet or be an empty folder; a non-empty one is refused
    (``OutputExistsError``) unless ``overwrite``, in which case it is replaced only after the new
    content is complete. ``inputs``: folders the content was read from, which ``target`` may not
    be, contain or lie inside. On any exception the temp folder is removed and the target is
    untouched; an ``OSError`` while writing becomes ``OutputWriteError`` naming the target.
    """
    target = check_target(target, overwrite=overwrite, inputs=inputs)
    parent = target.parent
    prefix = f".{target.name}{_TMP_TAG}{os.getpid()}-"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _clear_stale(target)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except OSError as e:
        raise RankwiseError(f"{target}: cannot create the output folder: {e.strerror or e}") from e
    try:
        try:
            yield tmp
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            os.chmod(tmp, 0o755)
            if target.exists():
                # Move the old folder aside first, so that a crash between the two renames leaves
                # the old content recoverable rather than lost.
                old = Path(tempfile.mkdtemp(prefix=f"{prefix}old-", dir=parent))
                os.rename(target, old / "prev")
                os.rename(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, target)
        except OSError as e:
            if isinstance(e, RankwiseError):
                raise
            raise OutputWriteError(
                e.errno, f"{target}: writing the output failed: {e.strerror or e}; nothing was written"
            ) from e
        with contextlib.suppress(OSError):
            fd = os.open(parent, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
