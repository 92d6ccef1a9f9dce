"""The fuzz generator: malformed inputs derived at test time from copies of the shared real files.

``build_cases(tmp, data)`` copies small parts of ``$STEXP_DATA`` into ``tmp``, breaks each copy
one way (truncation, corrupt bytes, wrong types, NaNs, mismatched ids, absurd declared sizes,
manifests pointing outside their folder, ...) and returns one :class:`Case` per broken input:
the commands to run on it (``info`` plus the relevant cheap command), the file the error must
name, a word of the problem it must state, and the expected verdict:

- ``"error"``: every command exits 2 with a last stderr line ``napari-stexp: error: <file>: ...``
- ``"warning"``: the input is repaired: exit 0 and a ``napari-stexp: warning:`` line naming it
- ``"accepted"``: the input is valid after all (exit 0)

Nothing here is big: the absurd sizes are only declared (see ``_craft.py``).
"""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _craft import huge_tiled_tiff, lying_jpeg

OUT = "{out}"  # placeholder for the per-run output location in a command


@dataclass
class Case:
    name: str
    path: Path  # the input given to the commands / the reader
    commands: list[list[str]]  # argv lists; "{out}" is replaced by a fresh output path
    names: str  # the file name the error line must contain
    problem: str = ""  # a word the error line must contain (case-insensitive)
    expect: str = "error"
    reader: bool = True  # also probe the napari reader with ``path``
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- byte mutations


def truncate(src: Path, dest: Path, fraction: float) -> Path:
    b = src.read_bytes()
    dest.write_bytes(b[: max(1, int(len(b) * fraction))])
    return dest


def corrupt(src: Path, dest: Path, start: float, n: int = 64, seed: int = 0) -> Path:
    b = bytearray(src.read_bytes())
    i = int(len(b) * start)
    b[i:i + n] = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    dest.write_bytes(bytes(b))
    return dest


def png_with_size(src: Path, dest: Path, width: int, height: int) -> Path:
    """A copy of a PNG whose IHDR declares another size (CRC fixed, so the header is valid)."""
    b = bytearray(src.read_bytes())
    ihdr = b.find(b"IHDR")
    b[ihdr + 4:ihdr + 8] = struct.pack(">I", width)
    b[ihdr + 8:ihdr + 12] = struct.pack(">I", height)
    crc = zlib.crc32(bytes(b[ihdr:ihdr + 17])) & 0xFFFFFFFF
    b[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
    dest.write_bytes(bytes(b))
    return dest


# --------------------------------------------------------------------------- commands


def _img_cmds(p: Path) -> list[list[str]]:
    return [["info", str(p)], ["segment", str(p), "--out", OUT]]


def _st_cmds(p: Path) -> list[list[str]]:
    return [["info", str(p)],
            ["expression", "train", "--data", str(p), "--out", OUT, "--tiny", "--epochs", "1",
             "--device", "cpu", "--quiet", "--no-cache"]]


def _train_only(p: Path) -> list[list[str]]:
    return _st_cmds(p)[1:]


def _crop_cmds(p: Path) -> list[list[str]]:
    return [["info", str(p)],
            ["bvae", "train", "--cells", str(p), "--out", OUT, "--tiny", "--epochs", "1",
             "--gene-epochs", "1", "--device", "cpu"]]


def _voc_cmds(folder: Path, xml: Path) -> list[list[str]]:
    return [["info", str(xml)],
            ["segment", "evaluate", "--images", str(folder / "JPEGImages"), "--boxes",
             str(folder / "Annotations"), "--out", OUT + ".csv"]]


# --------------------------------------------------------------------------- images


def image_cases(tmp: Path, data: Path) -> list[Case]:
    d = tmp / "img"
    d.mkdir()
    png = data / "skimage-ihc" / "ihc.png"
    jpg = sorted((data / "bccd-wbc" / "smears" / "JPEGImages").glob("*.jpg"))[0]
    cases = []

    def add(name, path, problem, cmds=None, **kw):
        cases.append(Case(name, path, cmds or _img_cmds(path), path.name, problem, **kw))

    add("png-truncated-half", truncate(png, d / "half.png", 0.5), "truncated")
    add("png-truncated-header", truncate(png, d / "head.png", 0.0005), "png")
    add("png-empty", _empty(d / "empty.png"), "empty")
    add("png-text", _text(d / "text.png"), "not a valid")
    add("png-declares-100k", png_with_size(png, d / "ihdr100k.png", 100_000, 100_000),
        "declares")
    add("png-declares-zero", png_with_size(png, d / "ihdr0.png", 0, 512), "png")
    add("png-corrupt-idat", corrupt(png, d / "idat.png", 0.4, 256), "decode",
        cmds=[["segment", str(d / "idat.png"), "--out", OUT]])
    add("jpeg-truncated", truncate(jpg, d / "trunc.jpg", 0.6), "truncated")
    add("jpeg-declares-65000", lying_jpeg(jpg, d / "bomb.jpg"), "declares")
    add("jpeg-declares-zero", lying_jpeg(jpg, d / "zero.jpg", side=0), "jpeg")
    # libjpeg decodes damaged entropy-coded data with artefacts: allowed (docs/formats-images)
    add("jpeg-scan-garbage", corrupt(jpg, d / "hdr.jpg", 0.5, 40), "", expect="accepted",
        cmds=[["info", str(d / "hdr.jpg")]])
    add("tiff-declares-1e6-squared", huge_tiled_tiff(d / "huge.tif"), "declares")
    tif = d / "ok.tif"
    _write_tiff(png, tif)
    add("tiff-truncated", truncate(tif, d / "trunc.tif", 0.5), "truncated")
    add("tiff-header-zeroed", _zero(tif, d / "zeroed.tif", 0, 8), "tiff")
    add("tiff-ifd-garbage", corrupt(tif, d / "ifd.tif", 0.0005, 16, seed=3), "tiff")
    add("bmp-truncated", _bmp_truncated(png, d / "trunc.bmp"), "bmp")
    add("unsupported-suffix", _copy(png, d / "image.xyz"), "",
        cmds=[["segment", str(d / "image.xyz"), "--out", OUT]], reader=False)
    add("png-named-tif", _copy(png, d / "really_png.tif"), "", expect="accepted",
        cmds=[["info", str(d / "really_png.tif")]])
    return cases


def _empty(p: Path) -> Path:
    p.write_bytes(b"")
    return p


def _text(p: Path) -> Path:
    p.write_text("this is not an image\n" * 20)
    return p


def _copy(src: Path, dest: Path) -> Path:
    shutil.copy(src, dest)
    return dest


def _zero(src: Path, dest: Path, start: int, n: int) -> Path:
    b = bytearray(src.read_bytes())
    b[start:start + n] = bytes(n)
    dest.write_bytes(bytes(b))
    return dest


def _write_tiff(png: Path, dest: Path) -> None:
    import tifffile
    from PIL import Image

    with Image.open(png) as im:
        arr = np.asarray(im.convert("RGB"))
    tifffile.imwrite(dest, arr, tile=(128, 128), compression="zlib")


def _bmp_truncated(png: Path, dest: Path) -> Path:
    from PIL import Image

    with Image.open(png) as im:
        im.convert("RGB").save(dest.with_suffix(".full.bmp"))
    truncate(dest.with_suffix(".full.bmp"), dest, 0.3)
    dest.with_suffix(".full.bmp").unlink()
    return dest


# --------------------------------------------------------------------------- h5ad


def _base_adata(data: Path):
    """A real ST AnnData: the Visium test section read by the package, as a plain h5ad."""
    from napari_stexp.io.st import read_st

    secs = read_st(data / "visium-scanpy-testdata")
    adata = next(iter(secs.values()))
    adata = adata.copy()
    adata.uns = {"spatial": {str(k): {"scalefactors": dict(v.get("scalefactors", {})),
                                      "images": {}, "metadata": {}}
                             for k, v in adata.uns.get("spatial", {}).items()}}
    return adata


def h5ad_cases(tmp: Path, data: Path) -> list[Case]:
    import h5py
    import scipy.sparse as sp

    d = tmp / "h5ad"
    d.mkdir()
    base = _base_adata(data)
    ok = d / "ok.h5ad"
    base.write_h5ad(ok)
    cases = []

    def variant(name, edit, problem, cmds=_st_cmds, **kw):
        a = base.copy()
        edited = edit(a)
        a = a if edited is None else edited  # an empty AnnData is falsy
        p = d / f"{name}.h5ad"
        a.write_h5ad(p)
        cases.append(Case(f"h5ad-{name}", p, cmds(p), p.name, problem, **kw))

    def counts(a):
        return a.layers["counts"] if "counts" in a.layers else a.X

    def set_counts(a, fn):
        M = sp.csr_matrix(counts(a), dtype=np.float64)
        M.data = fn(M.data.copy())
        a.X = M
        a.layers["counts"] = M.copy()

    def strings(a):
        a.obsm["spatial"] = np.array([[f"{x:.0f}px", f"{y:.0f}px"] for x, y in
                                      np.asarray(a.obsm["spatial"])], dtype=object).astype(str)

    variant("spatial-strings", strings, "obsm['spatial']")

    def nan_xy(a):
        xy = np.asarray(a.obsm["spatial"], dtype=float).copy()
        xy[3] = np.nan
        a.obsm["spatial"] = xy

    variant("spatial-nan", nan_xy, "nan")
    variant("spatial-1col", lambda a: a.obsm.__setitem__(
        "spatial", np.asarray(a.obsm["spatial"])[:, :1].copy()), "obsm['spatial']")

    def far(a):
        a.obsm["spatial"] = np.asarray(a.obsm["spatial"], dtype=float) * 1000 + 1e7

    variant("spots-far-outside", far, "outside", cmds=_train_only)

    def neg(a):
        set_counts(a, lambda v: np.where(np.arange(v.size) == 5, -3.0, v))

    variant("negative-counts", neg, "negative")
    variant("count-1e300", lambda a: set_counts(
        a, lambda v: np.where(np.arange(v.size) == 7, 1e300, v)), "float32")
    variant("count-nan", lambda a: set_counts(
        a, lambda v: np.where(np.arange(v.size) == 9, np.nan, v)), "nan")
    variant("count-inf", lambda a: set_counts(
        a, lambda v: np.where(np.arange(v.size) == 9, np.inf, v)), "infinite")
    variant("zero-spots", lambda a: a[:0].copy(), "no spots")

    def dup(a):
        names = list(a.obs_names)
        names[1] = names[0]
        a.obs_names = names

    variant("duplicate-spot-ids", dup, "duplicate")

    def libs(a):
        a.uns["spatial"] = {"lib1": {}, "lib2": {}}
        if "section" in a.obs:
            del a.obs["section"]
        for c in ("library_id", "sample"):
            if c in a.obs:
                del a.obs[c]

    variant("two-libraries-no-column", libs, "libraries")

    # raw-file damage
    cases.append(Case("h5ad-truncated", truncate(ok, d / "trunc.h5ad", 0.5), _st_cmds(
        d / "trunc.h5ad"), "trunc.h5ad", "h5ad"))
    cases.append(Case("h5ad-random-bytes", corrupt(ok, d / "rand.h5ad", 0.0, 4096),
                      _st_cmds(d / "rand.h5ad"), "rand.h5ad", "h5ad"))
    cases.append(Case("h5ad-text", _text(d / "text.h5ad"), _st_cmds(d / "text.h5ad"),
                      "text.h5ad", "h5ad"))

    def h5edit(name, fn, problem):
        p = d / f"{name}.h5ad"
        shutil.copy(ok, p)
        with h5py.File(p, "r+") as f:
            fn(f)
        cases.append(Case(f"h5ad-{name}", p, _st_cmds(p), p.name, problem))

    def bad_index(f):
        for key in ("X", "layers/counts"):
            if key in f and isinstance(f[key], h5py.Group):
                ind = f[key]["indices"]
                v = ind[()]
                v[len(v) // 2] = 10**6
                ind[...] = v

    h5edit("csr-index-out-of-range", bad_index, "index")

    def bad_indptr(f):
        for key in ("X", "layers/counts"):
            if key in f and isinstance(f[key], h5py.Group):
                ip = f[key]["indptr"]
                v = ip[()]
                v[5], v[6] = v[6] + 3, v[5]
                ip[...] = v

    h5edit("csr-indptr-decreasing", bad_indptr, "indptr")
    return cases


# --------------------------------------------------------------------------- visium


def visium_cases(tmp: Path, data: Path) -> list[Case]:
    import h5py

    src = data / "visium-scanpy-testdata"
    cases = []

    def variant(name, edit, problem, names="filtered_feature_bc_matrix.h5", cmds=_st_cmds,
                **kw):
        folder = tmp / "visium" / name
        shutil.copytree(src, folder)
        edit(folder)
        cases.append(Case(f"visium-{name}", folder, cmds(folder), names, problem, **kw))

    def h5(fn):
        def edit(folder):
            with h5py.File(folder / "filtered_feature_bc_matrix.h5", "r+") as f:
                fn(f["matrix"])
        return edit

    def col_index(g):
        v = g["indices"][()]
        v[len(v) // 3] = 10**6
        g["indices"][...] = v

    variant("index-out-of-range", h5(col_index), "index")

    def indptr(g):
        v = g["indptr"][()]
        v[10], v[11] = v[11] + 5, v[10]
        g["indptr"][...] = v

    variant("indptr-decreasing", h5(indptr), "indptr")

    def negative(g):
        v = g["data"][()].astype(np.int64)
        v[3] = -7
        del g["data"]
        g["data"] = v

    variant("negative-counts", h5(negative), "negative")

    def huge(g):
        v = g["data"][()].astype(np.float64)
        v[4] = 1e300
        del g["data"]
        g["data"] = v

    variant("count-1e300", h5(huge), "float32")

    def no_indptr(g):
        del g["indptr"]

    variant("missing-indptr", h5(no_indptr), "indptr")

    def barcodes(g):
        v = g["barcodes"][()]
        del g["barcodes"]
        g["barcodes"] = v[:-3]

    variant("barcode-count-mismatch", h5(barcodes), "barcodes")
    variant("matrix-truncated", lambda f: truncate(
        f / "filtered_feature_bc_matrix.h5", f / "filtered_feature_bc_matrix.h5", 0.4),
        "matrix")

    def no_matrix(folder):
        (folder / "filtered_feature_bc_matrix.h5").unlink()

    variant("matrix-missing", no_matrix, "", names="matrix-missing")

    pos = src / "spatial" / "tissue_positions_list.csv"

    def positions(fn):
        def edit(folder):
            lines = pos.read_text().splitlines()
            (folder / "spatial" / pos.name).write_text("\n".join(fn(lines)) + "\n")
        return edit

    with h5py.File(src / "filtered_feature_bc_matrix.h5", "r") as f:
        in_matrix = {b.decode() for b in f["matrix"]["barcodes"][()]}

    def nan_row(lines):
        i = next(i for i, ln in enumerate(lines) if ln.split(",")[1].strip() == "1"
                 and ln.split(",")[0].strip() in in_matrix)
        parts = lines[i].split(",")
        parts[-1] = "NaN"
        parts[-2] = "abc"
        lines[i] = ",".join(parts)
        return lines

    variant("positions-non-numeric", positions(nan_row), "coordinates",
            names="tissue_positions")
    variant("positions-missing", lambda f: (f / "spatial" / pos.name).unlink(), "positions",
            names="spatial")
    variant("positions-no-matching-barcode", positions(
        lambda ls: [("X" + x) if i else x for i, x in enumerate(ls)] if ls[0][:1].isalpha()
        and "barcode" in ls[0] else ["X" + x for x in ls]), "barcode", names="positions-no-matching-barcode")

    sf = src / "spatial" / "scalefactors_json.json"

    def scalefactors(text):
        def edit(folder):
            (folder / "spatial" / sf.name).write_text(text)
        return edit

    variant("scalefactors-not-json", scalefactors("{not json"), "json",
            names="scalefactors_json.json")
    d = json.loads(sf.read_text())
    bad = {k: ("huge" if "scalef" in k else v) for k, v in d.items()}
    variant("scalefactors-strings", scalefactors(json.dumps(bad)), "",
            names="scalefactors_json.json")
    neg = {k: (-abs(float(v)) if "scalef" in k else v) for k, v in d.items()}
    variant("scalefactors-negative", scalefactors(json.dumps(neg)), "",
            names="scalefactors_json.json")
    return cases


# --------------------------------------------------------------------------- her2st


def _her2st_copy(src: Path, dest: Path, section: str = "A1") -> Path:
    import pandas as pd

    man = pd.read_csv(src / "sections.csv", dtype=str, keep_default_na=False)
    row = man[man.section == section]
    dest.mkdir(parents=True)
    for col in ("counts", "spots", "image", "labels"):
        v = row[col].iloc[0]
        if v:
            (dest / v).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / v, dest / v)
    row.to_csv(dest / "sections.csv", index=False)
    shutil.copy(src / "her_hvg_cut_1000.npy", dest / "her_hvg_cut_1000.npy")
    return dest


def her2st_cases(tmp: Path, data: Path) -> list[Case]:
    src = data / "her2st"
    cases = []
    counts_name = "A1.tsv.gz"

    def variant(name, edit, problem, names=counts_name, cmds=_st_cmds, **kw):
        folder = _her2st_copy(src, tmp / "her2st" / name)
        edit(folder)
        cases.append(Case(f"her2st-{name}", folder, cmds(folder), names, problem, **kw))

    def counts(fn):
        def edit(folder):
            p = folder / "ST-cnts" / counts_name
            lines = gzip.decompress(p.read_bytes()).decode().splitlines()
            p.write_bytes(gzip.compress(("\n".join(fn(lines)) + "\n").encode(), compresslevel=1))
        return edit

    def cell(row, col, value):
        def fn(lines):
            parts = lines[row].split("\t")
            parts[col] = value
            lines[row] = "\t".join(parts)
            return lines
        return fn

    variant("negative-count", counts(cell(3, 5, "-4")), "negative")
    variant("count-1e300", counts(cell(3, 5, "1e300")), "float32")
    variant("count-text", counts(cell(3, 5, "many")), "non-numeric")
    variant("count-empty-cell", counts(cell(3, 5, "")), "")
    variant("duplicate-spot-id", counts(lambda ls: ls[:3] + [ls[2]] + ls[3:]), "duplicate")
    variant("no-matching-spot-ids", counts(
        lambda ls: ls[:1] + ["Z" + x for x in ls[1:]]), "none of")
    variant("counts-truncated-gzip", lambda f: truncate(
        f / "ST-cnts" / counts_name, f / "ST-cnts" / counts_name, 0.5), "")

    def drop_panel_gene(lines):
        panel = set(np.load(src / "her_hvg_cut_1000.npy", allow_pickle=False).astype(str))
        head = lines[0].split("\t")
        j = next(i for i, g in enumerate(head) if g in panel)
        return ["\t".join(p[:j] + p[j + 1:]) for p in (x.split("\t") for x in lines)]

    variant("panel-gene-missing", counts(drop_panel_gene), "panel", names="A1",
            cmds=_train_only)

    def pickled_panel(folder):
        arr = np.load(src / "her_hvg_cut_1000.npy", allow_pickle=False).astype(object)
        np.save(folder / "her_hvg_cut_1000.npy", arr, allow_pickle=True)

    variant("panel-pickled", pickled_panel, "gene list", names="her_hvg_cut_1000.npy",
            cmds=_train_only)
    variant("panel-corrupt", lambda f: corrupt(
        f / "her_hvg_cut_1000.npy", f / "her_hvg_cut_1000.npy", 0.0, 40), "gene list",
        names="her_hvg_cut_1000.npy", cmds=_train_only)

    def binary_genes(folder):
        (folder / "genes.txt").write_bytes(bytes(range(256)) * 8)

    variant("genes-file-binary", binary_genes, "binary", names="genes.txt",
            cmds=lambda p: [_train_only(p)[0] + ["--genes", str(p / "genes.txt")]])

    def spots(fn):
        def edit(folder):
            p = folder / "ST-spotfiles" / "A1_selection.tsv"
            p.write_text("\n".join(fn(p.read_text().splitlines())) + "\n")
        return edit

    variant("spots-missing-column", spots(
        lambda ls: ["\t".join(x.split("\t")[1:]) for x in ls]), "", names="A1_selection.tsv")
    variant("spots-non-numeric", spots(
        lambda ls: ls[:2] + ["\t".join(["a"] * len(ls[2].split("\t")))] + ls[3:]), "",
        names="A1_selection.tsv")

    def manifest(col, value):
        def edit(folder):
            import pandas as pd

            man = pd.read_csv(folder / "sections.csv", dtype=str, keep_default_na=False)
            man[col] = value
            man.to_csv(folder / "sections.csv", index=False)
        return edit

    variant("manifest-outside-folder", manifest("counts", "../../../../etc/hostname"),
            "outside", names="sections.csv")
    variant("manifest-missing-file", manifest("counts", "ST-cnts/NOPE.tsv.gz"), "",
            names="NOPE.tsv.gz")
    variant("manifest-bad-scale", manifest("pixel_scale", "wide"), "pixel_scale",
            names="sections.csv")
    variant("image-truncated", lambda f: truncate(
        f / "app-imgs" / "A1_HE_image_dark.png", f / "app-imgs" / "A1_HE_image_dark.png",
        0.5), "", names="A1_HE_image_dark.png", cmds=_train_only)
    return cases


# --------------------------------------------------------------------------- crops and VOC


def _crop_copy(bccd: Path, dest: Path, n: int = 6):
    import pandas as pd

    table = pd.read_csv(bccd / "labels.csv").groupby("label").head(2).head(n)
    dest.mkdir(parents=True)
    for rel in table["crop_path"]:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(bccd / rel, dest / rel)
    table[["crop_path", "label"]].to_csv(dest / "labels.csv", index=False)
    return table


def crop_cases(tmp: Path, data: Path) -> list[Case]:
    import pandas as pd

    bccd = data / "bccd-wbc"
    cases = []

    def variant(name, edit, problem, names="labels.csv", cmds=_crop_cmds, **kw):
        folder = tmp / "crops" / name
        table = _crop_copy(bccd, folder)
        edit(folder, table)
        cases.append(Case(f"crops-{name}", folder, cmds(folder), names, problem, **kw))

    def rewrite(fn):
        def edit(folder, table):
            t = table[["crop_path", "label"]].copy()
            t = fn(t)
            t.to_csv(folder / "labels.csv", index=False)
        return edit

    def outside(t):
        t.loc[t.index[-1], "crop_path"] = "../../../../etc/hostname"
        return t

    variant("csv-points-outside", rewrite(outside), "outside")

    def absolute(t):
        t.loc[t.index[0], "crop_path"] = "/etc/hostname"
        return t

    variant("csv-absolute-outside", rewrite(absolute), "outside")

    def missing(t):
        t.loc[t.index[0], "crop_path"] = "crops/none/missing.jpg"
        return t

    variant("csv-missing-file", rewrite(missing), "does not exist")
    variant("csv-no-label-column", rewrite(lambda t: t[["crop_path"]]), "label")
    variant("csv-no-rows", rewrite(lambda t: t.iloc[:0]), "no rows")
    variant("csv-empty-file", lambda f, t: (f / "labels.csv").write_text(""), "empty")

    def truncated_crop(folder, table):
        p = folder / table["crop_path"].iloc[0]
        truncate(p, p, 0.3)

    variant("crop-truncated", truncated_crop, "", names=".jpg",
            cmds=lambda p: _crop_cmds(p)[1:])

    def text_crop(folder, table):
        (folder / table["crop_path"].iloc[1]).write_text("not an image")

    variant("crop-text", text_crop, "", names=".jpg", cmds=lambda p: _crop_cmds(p)[1:])
    del pd
    return cases


def voc_cases(tmp: Path, data: Path) -> list[Case]:
    src = data / "bccd-wbc" / "smears"
    xmls = sorted((src / "Annotations").glob("*.xml"))[:2]
    cases = []

    def variant(name, edit, problem):
        folder = tmp / "voc" / name
        (folder / "Annotations").mkdir(parents=True)
        (folder / "JPEGImages").mkdir()
        for x in xmls:
            shutil.copy(x, folder / "Annotations" / x.name)
            shutil.copy(src / "JPEGImages" / (x.stem + ".jpg"), folder / "JPEGImages")
        target = folder / "Annotations" / xmls[0].name
        edit(target)
        cases.append(Case(f"voc-{name}", target, _voc_cmds(folder, target), target.name,
                          problem, reader=True))

    def sub(old, new):
        def edit(p):
            text = p.read_text()
            import re

            p.write_text(re.sub(old, new, text, count=1))
        return edit

    variant("negative-width", sub(r"<width>\d+</width>", "<width>-640</width>"), "width")
    variant("negative-height", sub(r"<height>\d+</height>", "<height>-480</height>"), "height")
    variant("not-xml", lambda p: p.write_text("<annotation><object>"), "xml")
    variant("wrong-root", lambda p: p.write_text("<svg></svg>"), "voc")
    return cases


BUILDERS: list[Callable[[Path, Path], list[Case]]] = [
    image_cases, h5ad_cases, visium_cases, her2st_cases, crop_cases, voc_cases]


def build_cases(tmp: Path, data: Path) -> list[Case]:
    cases: list[Case] = []
    tmp.mkdir(parents=True, exist_ok=True)
    for build in BUILDERS:
        cases.extend(build(tmp, data))
    return cases
