"""Atomic writes: write to a temporary sibling, then rename over the target."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success move it onto ``target``.

    On any exception the temporary file (or folder) is removed and ``target`` is untouched,
    so a crash or a cancel never leaves a half-written result behind.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=target.suffix, dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        _apply_umask(tmp)
        if directory:
            if target.exists():
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        else:
            os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


def _apply_umask(path: Path) -> None:
    """mkstemp/mkdtemp create owner-only files; give the result the usual umask-based mode."""
    umask = os.umask(0)
    os.umask(umask)
    mode = (0o777 if path.is_dir() else 0o666) & ~umask
    with contextlib.suppress(OSError):
        os.chmod(path, mode)
