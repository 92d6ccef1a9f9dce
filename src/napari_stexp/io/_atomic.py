"""Atomic writes: write to a temporary sibling, then rename over the target.

- The temporary is ``.NAME.tmp-<pid>-<random>`` beside the target; on any exception it is
  removed and the target is untouched.
- The final move happens under an exclusive lock of the target (a ``.NAME.lock`` file beside
  it, removed on release), so concurrent writers of one target replace it one after the other:
  never "Directory not empty", never a left-over ``.NAME.old-*`` folder. A folder is swapped in
  with one ``renameat2(RENAME_EXCHANGE)`` where the OS has it (Linux), so the target is never
  missing, not even for a moment.
- Under that lock, temporaries of the same target left by killed writers (their pid is gone)
  are swept.
- :func:`claim_target` holds the lock for a whole job (a training into a model folder): a
  second process claiming the same target is refused with a clear ``InputError``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import shutil
import tempfile
import threading
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
    prefix = f"{_tmp_prefix(target)}{os.getpid()}-"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=target.suffix, dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        _apply_umask(tmp)
        with target_lock(target):
            if directory and target.is_dir() and not target.is_symlink():
                if _exchange(tmp, target):  # tmp now holds the previous folder
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{os.getpid()}-",
                                                dir=target.parent))
                    os.replace(target, old / "x")
                    os.replace(tmp, target)
                    shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
            sweep_stale(target)
    except BaseException:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_writer(target: str | os.PathLike, what: str, *,
                  directory: bool = False) -> Iterator[Path]:
    """:func:`atomic_path` for a writer of ``what`` ("h5ad", "OME-Zarr", ...): any failure of the
    writer becomes one ``InputError("<target>: cannot write <what> (...)")`` and nothing is left
    at ``target``; our own errors and a cancel pass through unchanged."""
    from ..errors import CancelledError, InputError

    with atomic_path(target, directory=directory) as tmp:
        try:
            yield tmp
        except (InputError, CancelledError):
            raise
        except Exception as exc:
            raise InputError(target, f"cannot write {what} ({type(exc).__name__}: {exc})"
                             ) from exc


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


_STALE = re.compile(r"^(?:tmp|old)-(\d+)-")


def sweep_stale(target: str | os.PathLike) -> list[Path]:
    """Remove ``.NAME.tmp-*`` / ``.NAME.old-*`` siblings of ``target`` whose writer is gone
    (its pid is not alive; names without a pid come from older versions). Call it holding the
    target's lock. Returns what was removed."""
    target = Path(target)
    removed = []
    head = f".{target.name}."
    try:
        siblings = list(target.parent.iterdir())
    except OSError:
        return removed
    for p in siblings:
        if not p.name.startswith(head):
            continue
        rest = p.name[len(head):]
        if not (rest.startswith("tmp-") or rest.startswith("old-")):
            continue
        m = _STALE.match(rest)
        if m is not None and _alive(int(m.group(1))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
        removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------- folder exchange

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap paths ``a`` and ``b`` (Linux ``renameat2``); False where unsupported."""
    global _libc
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return False
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _libc.renameat2  # noqa: B018 - glibc >= 2.28
        except (OSError, AttributeError):
            _libc = False
    if _libc is False:
        return False
    rc = _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b),
                         _RENAME_EXCHANGE)
    return rc == 0  # EINVAL/ENOSYS (file system without exchange): the two-step fallback


# ----------------------------------------------------------------------------- locks

_held: dict[str, int] = {}  # lock path -> fd, this process's locks (re-entrant)
_held_lock = threading.RLock()


def _lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


class TargetLock:
    """An exclusive, process-re-entrant lock on ``target`` (``fcntl.flock`` on ``.NAME.lock``;
    the lock file is removed on release). ``wait=False``: refuse at once when another process
    holds it."""

    def __init__(self, target: str | os.PathLike, *, wait: bool = True):
        self.target = Path(target)
        self.path = _lock_path(self.target)
        self.wait = wait
        self._mine = False

    def acquire(self) -> TargetLock:
        import fcntl

        from ..errors import InputError

        key = str(self.path.absolute())
        with _held_lock:
            if key in _held:  # held by this process (an outer job): nothing to do
                return self
            self.path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
                except BlockingIOError:
                    owner = _read_owner(fd)
                    os.close(fd)
                    raise InputError(self.target, "another process"
                                     f"{f' (pid {owner})' if owner else ''} is writing it; "
                                     "wait until it has finished or choose another output"
                                     ) from None
                except BaseException:
                    os.close(fd)
                    raise
                try:  # the file we locked may have been unlinked by the previous holder
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            _held[key] = fd
            self._mine = True
        return self

    def release(self) -> None:
        if self._mine:
            _release(self.path)
        self._mine = False

    def __enter__(self) -> TargetLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _release(lock_path: Path) -> None:
    with _held_lock:
        fd = _held.pop(str(lock_path.absolute()), None)
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock_path)  # still locked: a waiter re-checks the inode
            os.close(fd)


def release_target(target: str | os.PathLike) -> None:
    """Release this process's hold of ``target``'s lock (taken by :func:`claim_target`)."""
    _release(_lock_path(Path(target)))


def _read_owner(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def target_lock(target: str | os.PathLike, *, wait: bool = True) -> TargetLock:
    """Context manager: the exclusive lock of ``target`` (see :class:`TargetLock`)."""
    return TargetLock(target, wait=wait)


def claim_target(target: str | os.PathLike) -> TargetLock:
    """Hold ``target``'s lock for a whole job (release it, or let the process exit): a second
    process writing the same target (another training into the same model folder) gets a clear
    InputError instead of silently replacing the first one's result."""
    import atexit

    lock = TargetLock(target, wait=False).acquire()
    atexit.register(lock.release)  # also when the job ends with an error (not on SIGKILL)
    return lock


def _apply_umask(path: Path) -> None:
    """mkstemp/mkdtemp create owner-only files; give the result the usual umask-based mode."""
    umask = os.umask(0)
    os.umask(umask)
    mode = (0o777 if path.is_dir() else 0o666) & ~umask
    with contextlib.suppress(OSError):
        os.chmod(path, mode)
