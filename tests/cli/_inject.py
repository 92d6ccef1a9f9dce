"""Run the CLI in a child process with an OS fault injected (used by the CLI OS-error tests).

``python _inject.py FAULT TARGET -- ARGS...`` patches the process so that writes under TARGET
fail the way FAULT does, then runs ``napari_stexp.cli.main(ARGS)`` and exits with its status.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import sys
from pathlib import Path


def _under(path, target: str) -> bool:
    try:
        return os.path.abspath(os.fspath(path)).startswith(target)
    except TypeError:
        return False


def install(fault: str, target: str) -> None:
    target = os.path.abspath(target)
    if fault == "erofs":
        code = errno.EROFS
        real_mkdir, real_open, real_os_open = Path.mkdir, builtins.open, os.open

        def mkdir(self, *a, **k):
            if _under(self, target) and not self.exists():
                raise OSError(code, os.strerror(code), str(self))
            return real_mkdir(self, *a, **k)

        def os_open(path, flags, *a, **k):
            if _under(path, target) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise OSError(code, os.strerror(code), os.fspath(path))
            return real_os_open(path, flags, *a, **k)

        def open_(file, mode="r", *a, **k):
            if _under(file, target) and any(c in mode for c in "wax+"):
                raise OSError(code, os.strerror(code), os.fspath(file))
            return real_open(file, mode, *a, **k)

        Path.mkdir, os.open, builtins.open, io.open = mkdir, os_open, open_, open_
    elif fault == "enospc":
        # the disk fills up while data are written: every write to a file under TARGET fails
        real_open = builtins.open

        class Full(io.RawIOBase):
            def __init__(self, f):
                self._f = f

            def writable(self):
                return True

            def write(self, b):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            def seek(self, *a):
                return self._f.seek(*a)

            def tell(self):
                return self._f.tell()

            def close(self):
                self._f.close()
                super().close()

        def open_(file, mode="r", *a, **k):
            f = real_open(file, mode, *a, **k)
            if _under(file, target) and any(c in mode for c in "wax+"):
                return Full(f)
            return f

        builtins.open = io.open = open_
    elif fault == "torch-full":
        # torch's zip writer reports a full disk as a RuntimeError without an errno
        import torch

        def save(*a, **k):
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos "
                               "2880 vs 2774")

        class Vfs:
            f_bavail, f_frsize = 0, 4096

        torch.save = save
        os.statvfs = lambda p: Vfs()
    else:
        raise SystemExit(f"unknown fault {fault}")


if __name__ == "__main__":
    fault, target, sep, *argv = sys.argv[1:]
    assert sep == "--"
    install(fault, target)
    from napari_stexp.cli import main

    sys.exit(main(argv))
