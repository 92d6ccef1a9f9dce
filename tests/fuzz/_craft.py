"""Hand-built files whose headers lie about their size (no big allocation to make them)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def huge_tiled_tiff(path: str | Path, side: int = 10**6, tile: int = 1024) -> Path:
    """A valid grey deflate TIFF declaring ``side`` x ``side`` px whose tiles all point at one
    compressed blank tile: a few MB on disk, ``side**2`` bytes decoded."""
    n = (-(-side // tile)) ** 2
    blank = zlib.compress(bytes(tile * tile), 9)
    entries = []  # (tag, type, count, value bytes)

    def short(tag, v):
        entries.append((tag, 3, 1, struct.pack("<HH", v, 0)))

    def long_(tag, v):
        entries.append((tag, 4, 1, struct.pack("<I", v)))

    header = 8
    n_tags = 10
    ifd_size = 2 + 12 * n_tags + 4
    data_at = header + ifd_size
    offsets_at = data_at + len(blank)
    counts_at = offsets_at + 4 * n
    long_(256, side)
    long_(257, side)
    short(258, 8)
    short(259, 8)  # deflate
    short(262, 1)  # min-is-black
    short(277, 1)
    short(322, tile)
    short(323, tile)
    entries.append((324, 4, n, struct.pack("<I", offsets_at)))
    entries.append((325, 4, n, struct.pack("<I", counts_at)))
    entries.sort()
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        ifd += struct.pack("<HHI", tag, typ, count) + value
    ifd += struct.pack("<I", 0)
    assert len(ifd) == ifd_size
    path = Path(path)
    with open(path, "wb") as fh:
        fh.write(b"II*\x00" + struct.pack("<I", header))
        fh.write(ifd)
        fh.write(blank)
        fh.write(struct.pack("<I", data_at) * n)
        fh.write(struct.pack("<I", len(blank)) * n)
    return path


def lying_jpeg(src: str | Path, dest: str | Path, side: int = 65000) -> Path:
    """A copy of a JPEG whose SOF header claims ``side`` x ``side`` px."""
    b = bytearray(Path(src).read_bytes())
    for marker in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1"):
        i = b.find(marker)
        if i >= 0:
            b[i + 5:i + 7] = side.to_bytes(2, "big")
            b[i + 7:i + 9] = side.to_bytes(2, "big")
            break
    Path(dest).write_bytes(bytes(b))
    return Path(dest)
