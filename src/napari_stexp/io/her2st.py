"""Reader for the her2st layout (Andersson et al. 2021), as upstream ``almaan/her2st`` lays it out.

::

    root/                       (or root/data/)
      sections.csv              optional manifest: section, patient, counts, spots, image,
                                pixel_scale, labels (paths relative to root)
      ST-cnts/{S}.tsv.gz        spot x gene UMI counts, row id "{x}x{y}" (array coordinates)
      ST-spotfiles/{S}_selection.tsv   x, y, new_x, new_y, pixel_x, pixel_y, selected
      ST-imgs/{P}/{S}/*.jpg     full-resolution H&E (P = patient = first letter of S)
      ST-pat/lbl/{S}_labeled_coordinates.tsv   x, y (= new_x, new_y), label

Joins (see ``shared/data/her2st/SOURCE.md``):

- counts row ``"{x}x{y}"`` ⋈ spot file integer ``x, y`` (inner join, dropped rows reported in
  ``uns['spatial'][S]['metadata']['join']`` and, for count rows without a spot, a warning);
- ``obsm['spatial']`` = (``pixel_x``, ``pixel_y``): full-resolution pixels, x = column;
- labels: ``floor(x + 0.5), floor(y + 0.5)`` of the label file ⋈ count row id; rows with NaN
  coordinates are dropped (warning), ``undetermined`` becomes a missing label;
- µm per full-resolution pixel from the data: ``pixel = s * (new - 1)`` is fitted, one array unit
  is 200 µm, so ``mpp = 200 / s``; spots are 100 µm across.
"""

from __future__ import annotations

import os
import re
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError, StexpWarning
from ._validate import check_columns
from .spatial import build_st_adata

#: Centre-to-centre distance of the ST v1 array (one array unit) and spot diameter, in µm.
ARRAY_UNIT_UM = 200.0
SPOT_DIAMETER_UM = 100.0
#: Long side of the in-memory ``hires`` image (pixels).
HIRES_LONG_SIDE = 2000
#: Labels that mean "no label".
MISSING_LABELS = frozenset({"undetermined", "", "nan", "na"})

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
_SECTION_COLUMNS = ["section", "patient", "counts", "spots", "image", "pixel_scale", "labels"]


class Her2stWarning(StexpWarning):
    """Something in a her2st folder was dropped or repaired while reading (rows, images)."""


# ----------------------------------------------------------------------------- discovery


def find_her2st_root(root: str | os.PathLike) -> Path:
    """The folder holding ``ST-cnts`` or ``sections.csv`` (``root`` itself or ``root/data``)."""
    root = Path(root)
    for cand in (root, root / "data"):
        if (cand / "sections.csv").is_file() or (cand / "ST-cnts").is_dir():
            return cand
    raise InputError(root, "not a her2st folder (no sections.csv and no ST-cnts/ folder)")


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == ""


def _from_manifest(root: Path) -> pd.DataFrame:
    path = root / "sections.csv"
    try:
        man = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise InputError(path, f"cannot read the manifest: {exc}") from exc
    check_columns(path, man.columns, ("section", "counts", "spots"))
    rows = []
    for _, r in man.iterrows():
        sec = str(r["section"]).strip()
        if not sec:
            continue

        def rel(col: str, r=r, sec=sec) -> str | None:
            v = r.get(col, "")
            if _blank(v):
                return None
            q = root / str(v).strip()
            # the manifest describes this folder: a path leaving it is refused
            if not q.resolve().is_relative_to(root.resolve()):
                raise InputError(path, f"section {sec}: {col} {str(v).strip()!r} points outside "
                                       "the her2st folder")
            return str(q)

        image = rel("image")
        scale = r.get("pixel_scale", "")
        try:
            pixel_scale = float(scale) if not _blank(scale) else (1.0 if image else np.nan)
        except ValueError as exc:
            raise InputError(path, f"section {sec}: pixel_scale {scale!r} is not a number") from exc
        patient = r.get("patient", "")
        rows.append({
            "section": sec,
            "patient": sec[0] if _blank(patient) else str(patient).strip(),
            "counts": rel("counts"),
            "spots": rel("spots"),
            "image": image,
            "pixel_scale": pixel_scale,
            "labels": rel("labels"),
        })
    return pd.DataFrame(rows, columns=_SECTION_COLUMNS)


def _discover(root: Path) -> pd.DataFrame:
    cnt_dir = root / "ST-cnts"
    ids: dict[str, Path] = {}
    for p in sorted(cnt_dir.iterdir()) if cnt_dir.is_dir() else []:
        m = re.fullmatch(r"(?:ut_)?(.+?)(?:_stdata_filtered)?\.tsv(?:\.gz)?", p.name)
        if m and p.is_file():
            ids.setdefault(m.group(1), p)
    rows = []
    for sec, counts in ids.items():
        spots = None
        for name in (f"{sec}_selection.tsv", f"{sec}_selection.tsv.gz"):
            if (root / "ST-spotfiles" / name).is_file():
                spots = root / "ST-spotfiles" / name
                break
        if spots is None:
            warnings.warn(f"{counts}: no spot file ST-spotfiles/{sec}_selection.tsv; "
                          f"section {sec} skipped", Her2stWarning, stacklevel=3)
            continue
        image = None
        for img_dir in (root / "ST-imgs" / sec[0] / sec, root / "ST-imgs" / sec):
            if img_dir.is_dir():
                found = sorted(p for p in img_dir.iterdir()
                               if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
                if found:
                    image = found[0]
                    break
        labels = root / "ST-pat" / "lbl" / f"{sec}_labeled_coordinates.tsv"
        rows.append({
            "section": sec,
            "patient": sec[0],
            "counts": str(counts),
            "spots": str(spots),
            "image": str(image) if image else None,
            "pixel_scale": 1.0 if image else np.nan,
            "labels": str(labels) if labels.is_file() else None,
        })
    if not rows:
        raise InputError(root, "no her2st sections found (expected ST-cnts/{S}.tsv.gz and "
                               "ST-spotfiles/{S}_selection.tsv)")
    return pd.DataFrame(rows, columns=_SECTION_COLUMNS)


def list_her2st_sections(root: str | os.PathLike) -> pd.DataFrame:
    """Sections of a her2st folder, one row each: ``section, patient, counts, spots, image,
    pixel_scale, labels`` (absolute paths; ``image``/``labels`` None when absent).

    Uses ``sections.csv`` when present, else discovers the upstream layout.
    """
    root = find_her2st_root(root)
    df = _from_manifest(root) if (root / "sections.csv").is_file() else _discover(root)
    if df["section"].duplicated().any():
        dup = df.loc[df["section"].duplicated(), "section"].tolist()
        raise InputError(root / "sections.csv", f"duplicate section(s): {', '.join(dup)}")
    return df.reset_index(drop=True)


def her2st_gene_panel(root: str | os.PathLike) -> list[str]:
    """The 785-gene panel HisToGene/Hist2ST use for her2st (``her_hvg_cut_1000.npy``)."""
    root = find_her2st_root(root)
    path = root / "her_hvg_cut_1000.npy"
    if not path.is_file():
        raise InputError(path, "gene panel file not found")
    try:
        return [str(g) for g in np.load(path, allow_pickle=False)]
    except Exception as exc:
        raise InputError(path, f"cannot read the gene panel: {exc}") from exc


# ----------------------------------------------------------------------------- counts


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise InputError(path, "file not found") from exc
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc}") from exc
    if data[:2] == b"\x1f\x8b":
        try:
            d = zlib.decompressobj(wbits=31)
            out = d.decompress(data)
            if not d.eof:
                raise InputError(path, "gzip stream is truncated (unexpected end of file)")
            return out
        except zlib.error as exc:
            raise InputError(path, f"corrupt gzip data: {exc}") from exc
    if path.suffix == ".gz":
        raise InputError(path, "not a gzip file")
    return data


def _parse_int_tsv(raw: bytes, chunk_bytes: int = 8_000_000):
    """Fast path for a tab-separated table of non-negative integers with a row-id column.

    Returns ``(row_ids, column_names, int32 matrix)`` or None when the table is anything else
    (floats, missing values, ragged rows): the caller then falls back to pandas. Vectorised
    digit accumulation is ~6x faster than ``pandas.read_csv`` on these very wide tables.
    """
    if b"\r" in raw:
        raw = raw.replace(b"\r", b"")
    nl = raw.find(b"\n")
    if nl < 0:
        return None
    header = raw[:nl].split(b"\t")
    ncol = len(header) - 1
    body = raw[nl + 1:].rstrip(b"\n") + b"\n"
    if ncol < 1 or len(body) < 2:
        return None
    buf = np.frombuffer(body, dtype=np.uint8)
    line_ends = np.flatnonzero(buf == 10)
    ids: list[str] = []
    blocks = []
    start = i0 = 0
    nlines = len(line_ends)
    while i0 < nlines:
        i1 = int(np.searchsorted(line_ends, start + chunk_bytes, side="right"))
        i1 = min(max(i1, i0 + 1), nlines)
        end = int(line_ends[i1 - 1]) + 1
        chunk = buf[start:end]
        seps = np.flatnonzero((chunk == 9) | (chunk == 10))
        nrow = i1 - i0
        if len(seps) != nrow * (ncol + 1):
            return None
        starts = np.empty_like(seps)
        starts[0] = 0
        starts[1:] = seps[:-1] + 1
        seps = seps.reshape(nrow, ncol + 1)
        starts = starts.reshape(nrow, ncol + 1)
        if not (chunk[seps[:, -1]] == 10).all():
            return None
        for r in range(nrow):
            ids.append(bytes(chunk[starts[r, 0]:seps[r, 0]]).decode("utf-8", "replace"))
        s = starts[:, 1:].ravel()
        ln = seps[:, 1:].ravel() - s
        if ln.size and ((ln <= 0).any() or ln.max() > 9):
            return None
        val = chunk[s].astype(np.int64) - 48
        if ((val < 0) | (val > 9)).any():
            return None
        idx = np.flatnonzero(ln > 1)
        j = 1
        while idx.size:
            d = chunk[s[idx] + j].astype(np.int64) - 48
            if ((d < 0) | (d > 9)).any():
                return None
            val[idx] = val[idx] * 10 + d
            idx = idx[ln[idx] > j + 1]
            j += 1
        blocks.append(val.reshape(nrow, ncol).astype(np.int32))
        start = end
        i0 = i1
    cols = [h.decode("utf-8", "replace") for h in header[1:]]
    return ids, cols, np.vstack(blocks)


def read_counts_tsv(path: str | os.PathLike) -> tuple[list[str], list[str], np.ndarray]:
    """Read a her2st count matrix: ``(spot ids, gene names, dense counts)``."""
    path = Path(path)
    raw = _read_bytes(path)
    if not raw.strip():
        raise InputError(path, "empty count file")
    parsed = _parse_int_tsv(raw)
    if parsed is None:  # general (slow) path: floats, NA, ...
        import io

        try:
            df = pd.read_csv(io.BytesIO(raw), sep="\t", index_col=0)
        except Exception as exc:
            raise InputError(path, f"cannot parse the count table: {exc}") from exc
        try:
            vals = df.to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(path, "count table has non-numeric values") from exc
        if not np.isfinite(vals).all():
            raise InputError(path, f"count table has {int((~np.isfinite(vals)).sum())} "
                                   "missing or non-finite value(s)")
        parsed = ([str(i) for i in df.index], [str(c) for c in df.columns], vals)
    ids, genes, mat = parsed
    if not ids:
        raise InputError(path, "count table has no rows")
    from ._validate import check_counts

    check_counts(path, mat, ids, what="count")
    if len(set(ids)) != len(ids):
        dup = pd.Index(ids)[pd.Index(ids).duplicated()][:5]
        raise InputError(path, f"duplicate spot id(s): {', '.join(dup)}")
    return ids, genes, mat


# ----------------------------------------------------------------------------- spots, labels


def _read_table(path: Path, required: Sequence[str], what: str) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, sep="\t")
    except FileNotFoundError as exc:
        raise InputError(path, "file not found") from exc
    except Exception as exc:
        raise InputError(path, f"cannot parse the {what} table: {exc}") from exc
    check_columns(path, df.columns, required, f" in the {what} file")
    return df


def _numeric(df: pd.DataFrame, cols: Sequence[str], path: Path) -> None:
    for c in cols:
        v = pd.to_numeric(df[c], errors="coerce")
        bad = v.isna() & df[c].notna()
        if bad.any():
            raise InputError(path, f"column {c} has non-numeric value(s), e.g. "
                                   f"{df.loc[bad, c].iloc[0]!r}")
        df[c] = v


def read_spot_file(path: str | os.PathLike) -> pd.DataFrame:
    """The spot file indexed by ``"{x}x{y}"``; rows with NaN coordinates dropped (warning)."""
    path = Path(path)
    df = _read_table(path, ["x", "y", "pixel_x", "pixel_y"], "spot")
    cols = [c for c in ("x", "y", "new_x", "new_y", "pixel_x", "pixel_y") if c in df.columns]
    _numeric(df, cols, path)
    bad = df[["x", "y", "pixel_x", "pixel_y"]].isna().any(axis=1)
    if bad.any():
        warnings.warn(f"{path}: dropped {int(bad.sum())} spot row(s) with NaN coordinates",
                      Her2stWarning, stacklevel=3)
        df = df.loc[~bad].copy()
    if "selected" in df.columns:
        sel = pd.to_numeric(df["selected"], errors="coerce").fillna(1) != 0
        df = df.loc[sel].copy()
    if not np.allclose(df["x"], np.round(df["x"])) or not np.allclose(df["y"], np.round(df["y"])):
        raise InputError(path, "array coordinates x, y must be integers")
    df["x"] = np.round(df["x"]).astype(np.int64)
    df["y"] = np.round(df["y"]).astype(np.int64)
    df.index = pd.Index([f"{a}x{b}" for a, b in zip(df["x"], df["y"], strict=True)])
    if df.index.has_duplicates:
        dup = df.index[df.index.duplicated()][:5]
        raise InputError(path, f"duplicate spot(s) at array position {', '.join(dup)}")
    return df


def read_label_file(path: str | os.PathLike) -> tuple[pd.Series, dict[str, Any]]:
    """Labels indexed by count-row id ``floor(x+0.5) x floor(y+0.5)`` and a small report.

    ``undetermined`` becomes NaN. Rows with NaN x/y are dropped with a warning. The report holds
    the raw per-label counts of the file (before any dropping) and the number of NaN rows.
    """
    path = Path(path)
    df = _read_table(path, ["x", "y", "label"], "label")
    _numeric(df, ["x", "y"], path)
    raw_counts = {str(k): int(v) for k, v in df["label"].astype(str).value_counts().items()}
    bad = df[["x", "y"]].isna().any(axis=1)
    if bad.any():
        warnings.warn(f"{path}: dropped {int(bad.sum())} label row(s) with NaN coordinates",
                      Her2stWarning, stacklevel=3)
        df = df.loc[~bad]
    key = [f"{int(np.floor(a + 0.5))}x{int(np.floor(b + 0.5))}"
           for a, b in zip(df["x"], df["y"], strict=True)]
    lab = df["label"].astype(object).where(df["label"].notna(), None)
    lab = pd.Series([None if v is None or str(v).strip().lower() in MISSING_LABELS
                     else str(v).strip() for v in lab], index=pd.Index(key), dtype=object)
    n_dup = int(lab.index.duplicated().sum())
    if n_dup:
        warnings.warn(f"{path}: {n_dup} label row(s) round to an already labelled spot; "
                      "kept the first", Her2stWarning, stacklevel=3)
        lab = lab[~lab.index.duplicated()]
    report = {"label_file_counts": raw_counts, "n_nan_coordinate_rows": int(bad.sum()),
              "n_duplicate_rows": n_dup}
    return lab, report


def fit_px_per_array_unit_xy(spots: pd.DataFrame) -> tuple[float, float]:
    """Full-resolution pixels per array unit along x and y.

    Least-squares fit of ``pixel = s * (new - 1)`` per axis (exact in her2st to ~1e-3 px; the two
    axes differ by up to ~1 %). Without the aligned ``new_*`` columns a line with an offset is
    fitted to the integer ``x``/``y`` instead.
    """
    out = []
    for ac, pc in (("x", "pixel_x"), ("y", "pixel_y")):
        p = spots[pc].to_numpy(dtype=np.float64)
        if f"new_{ac}" in spots.columns:
            a = spots[f"new_{ac}"].to_numpy(dtype=np.float64) - 1.0
            ok = np.isfinite(a) & np.isfinite(p)
            den = float(np.sum(a[ok] ** 2))
            out.append(float(np.sum(a[ok] * p[ok]) / den) if den > 0 else float("nan"))
        else:
            x = spots[ac].to_numpy(dtype=np.float64)
            ok = len(x) >= 2 and np.ptp(x) > 0
            out.append(float(abs(np.polyfit(x, p, 1)[0])) if ok else float("nan"))
    return out[0], out[1]


def fit_px_per_array_unit(spots: pd.DataFrame) -> float:
    """Mean of the x and y pixels per array unit (see :func:`fit_px_per_array_unit_xy`)."""
    sx, sy = fit_px_per_array_unit_xy(spots)
    vals = [v for v in (sx, sy) if np.isfinite(v) and v > 0]
    return float(np.mean(vals)) if vals else float("nan")


# ----------------------------------------------------------------------------- images


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file from its header (nothing decoded)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return int(im.size[0]), int(im.size[1])
    except Exception as exc:
        raise InputError(path, f"cannot open image: {exc}") from exc


def load_small_image(path: str | os.PathLike, long_side: int = HIRES_LONG_SIDE
                     ) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Decode an image at about ``long_side`` px (JPEG: DCT-domain draft decoding, fast).

    Returns ``(rgb uint8 array, factor = small px / file px, (file width, file height))``.
    Images whose long side is within 20 % of ``long_side`` are kept at full size.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                big = max(w, h)
                if big > long_side * 1.2:
                    f = long_side / big
                    target = (max(1, round(w * f)), max(1, round(h * f)))
                    if im.format == "JPEG":
                        im.draft("RGB", target)
                    small = im.convert("RGB")
                    if small.size != target:
                        small = small.resize(target, Image.Resampling.BILINEAR)
                else:
                    small = im.convert("RGB")
                arr = np.asarray(small)
    except Exception as exc:
        raise InputError(path, f"cannot decode image: {exc}") from exc
    return arr, arr.shape[1] / w, (w, h)


# ----------------------------------------------------------------------------- reader


def _select_genes(genes_all: list[str], genes: Sequence[str], section: str, path: Path
                  ) -> np.ndarray:
    pos = {g: i for i, g in enumerate(genes_all)}
    missing = [g for g in genes if g not in pos]
    if missing:
        more = f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""
        raise InputError(path, f"section {section}: {len(missing)} requested gene(s) not in the "
                               f"count table: {', '.join(missing[:10])}{more}")
    return np.array([pos[g] for g in genes], dtype=np.int64)


def read_her2st_section(row: pd.Series | dict, *, images: bool = True,
                        genes: Sequence[str] | None = None):
    """Read one section described by a row of :func:`list_her2st_sections`."""
    row = dict(row)
    sec = str(row["section"])
    counts_path = Path(row["counts"])
    spots_path = Path(row["spots"])
    ids, gene_names, mat = read_counts_tsv(counts_path)
    spots = read_spot_file(spots_path)

    # counts ⋈ spots (inner join, count-file order)
    in_spots = pd.Index(ids).isin(spots.index)
    keep = np.flatnonzero(in_spots)
    if keep.size == 0:
        raise InputError(counts_path, f"none of the {len(ids)} count row ids (e.g. "
                                      f"{', '.join(ids[:3])}) match a spot id 'x'x'y' of "
                                      f"{spots_path} (e.g. {', '.join(spots.index[:3])})")
    n_counts_no_spot = len(ids) - keep.size
    if n_counts_no_spot:
        miss = [ids[i] for i in np.flatnonzero(~in_spots)[:5]]
        warnings.warn(f"{counts_path}: dropped {n_counts_no_spot} count row(s) with no spot in "
                      f"{spots_path.name} (e.g. {', '.join(miss)})", Her2stWarning, stacklevel=2)
    obs_names = [ids[i] for i in keep]
    sp_rows = spots.loc[obs_names]
    n_spots_no_counts = int((~spots.index.isin(obs_names)).sum())

    if genes is not None:
        cols = _select_genes(gene_names, list(genes), sec, counts_path)
        mat = mat[:, cols]
        gene_names = [gene_names[i] for i in cols]
    X = sp.csr_matrix(mat[keep].astype(np.float32))
    del mat
    var_index = pd.Index(gene_names)
    if var_index.has_duplicates:
        import anndata as ad

        warnings.warn(f"{counts_path}: duplicate gene names made unique", Her2stWarning,
                      stacklevel=2)
        var_index = ad.utils.make_index_unique(var_index)

    # labels
    labels = None
    label_report: dict[str, Any] = {}
    if row.get("labels") and not _blank(row.get("labels")):
        lab, label_report = read_label_file(row["labels"])
        labels = lab.reindex(obs_names).to_numpy(dtype=object)
        labels = [v if isinstance(v, str) else np.nan for v in labels]
        label_report["n_labelled_spots_without_counts"] = int(
            (~lab.index.isin(obs_names)).sum())
        label_report["n_spots_without_label_row"] = int((~pd.Index(obs_names).isin(lab.index))
                                                        .sum())

    # physical scale from the data
    s = fit_px_per_array_unit(spots)
    mpp = ARRAY_UNIT_UM / s if np.isfinite(s) and s > 0 else None
    diameter = SPOT_DIAMETER_UM / mpp if mpp else None

    # image
    image_path = None if _blank(row.get("image")) else Path(row["image"])
    pixel_scale = row.get("pixel_scale")
    image_scale = float(pixel_scale) if not _blank(pixel_scale) else 1.0
    hires = None
    hires_scalef = None
    img_meta: dict[str, Any] = {}
    if image_path is not None and not image_path.is_file():
        warnings.warn(f"{image_path}: image of section {sec} not found; reading without it",
                      Her2stWarning, stacklevel=2)
        image_path = None
    if image_path is not None:
        if images:
            hires, factor, (w, h) = load_small_image(image_path)
            hires_scalef = image_scale * factor
        else:
            w, h = image_size(image_path)
        img_meta = {"image_width": int(w), "image_height": int(h)}

    adata = build_st_adata(
        X,
        obs_names,
        var_index,
        sp_rows[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64),
        section=sec,
        patient=str(row.get("patient") or sec[0]),
        labels=labels,
        array_xy=sp_rows[["x", "y"]].to_numpy(),
        spot_diameter_fullres=diameter,
        mpp_fullres=mpp,
        image_path=image_path,
        image_scale=image_scale,
        hires_image=hires,
        hires_scalef=hires_scalef,
        source=counts_path,
    )
    meta = adata.uns["spatial"][sec]["metadata"]
    meta.update(img_meta)
    meta["format"] = "her2st"
    meta["spots_file"] = str(spots_path)
    if row.get("labels") and not _blank(row.get("labels")):
        meta["labels_file"] = str(row["labels"])
    if np.isfinite(s):
        meta["fullres_px_per_array_unit"] = float(s)
        meta["fullres_px_per_array_unit_xy"] = [float(v) for v in fit_px_per_array_unit_xy(spots)]
    meta["join"] = {
        "n_count_rows": len(ids),
        "n_spot_rows": len(spots),
        "n_count_rows_without_spot": int(n_counts_no_spot),
        "n_spots_without_counts": n_spots_no_counts,
        **label_report,
    }
    return adata


def read_her2st(root: str | os.PathLike, sections: Sequence[str] | str | None = None, *,
                images: bool = True, genes: Sequence[str] | None = None) -> dict[str, Any]:
    """Read her2st sections into ST AnnData objects, keyed by section id (manifest order).

    ``sections`` restricts to those ids (unknown ids -> :class:`InputError` listing the known
    ones). ``images=True`` decodes a ~2000 px ``hires`` image into ``uns``; the full-resolution
    image stays on disk (``metadata['source_image_path']``). ``genes`` restricts and orders var.
    """
    table = list_her2st_sections(root)
    if isinstance(sections, str):
        sections = [sections]
    if sections is not None:
        known = table["section"].tolist()
        unknown = [s for s in sections if s not in known]
        if unknown:
            raise InputError(find_her2st_root(root), f"unknown section(s) {', '.join(unknown)}; "
                                                     f"available: {', '.join(known)}")
        table = table.set_index("section", drop=False).loc[list(sections)]
    out: dict[str, Any] = {}
    for _, row in table.iterrows():
        out[str(row["section"])] = read_her2st_section(row, images=images, genes=genes)
    return out
