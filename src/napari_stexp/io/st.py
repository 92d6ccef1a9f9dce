"""One entry point for spatial-transcriptomics data: detect the format, read sections, open images.

Every other module (CLI ``info``, loader widget, datasets) goes through :func:`read_st`, which
returns ``{section: AnnData}`` following :mod:`napari_stexp.io.spatial`, whatever the format:

- ``her2st``: a her2st folder (``ST-cnts``/``sections.csv``), see :mod:`.her2st`;
- ``visium``: a Space Ranger output folder, see :mod:`.visium`;
- ``h5ad``: an ``.h5ad`` following scanpy/squidpy conventions, see :mod:`.h5ad`.

Images stay lazy: :func:`section_image` opens the full-resolution image on demand (or wraps the
small in-memory ``hires``/``lowres`` image) with ``mpp`` chosen so that the image and the spots
(:func:`~napari_stexp.io.spatial.spots_rc_um`) share one micrometre frame.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError, StexpWarning
from .frame import mpp_of
from .keys import (
    IMAGE_SCALE,
    IMAGES,
    METADATA,
    SCALEFACTORS,
    SOURCE_IMAGE_PATH,
    SPATIAL,
    SPOT_DIAMETER_FULLRES,
)
from .spatial import spatial_info

ST_KINDS = ("her2st", "visium", "h5ad", "xenium", "visium-hd", "spatialdata")


class STWarning(StexpWarning):
    """Sections renamed, images missing or other repairs done by the ST dispatcher."""


# ----------------------------------------------------------------------------- detection


def _found(find_root, path: Path) -> Path | None:
    """The dataset root ``find_root`` (``find_her2st_root``, ``find_visium_root``) finds at
    ``path``, or None when ``path`` is not a folder of that kind (the finder's ``InputError``)."""
    try:
        return find_root(path)
    except InputError:
        return None


def _resolve(path: str | os.PathLike) -> tuple[str | None, Path, list[str] | None]:
    """``(kind, dataset root, sections implied by the path)``; kind None when unknown."""
    from .her2st import find_her2st_root
    from .spatialdata import looks_like_spatialdata
    from .visium import find_visium_root
    from .visium_hd import looks_like_visium_hd
    from .xenium import looks_like_xenium

    p = Path(path)
    for kind, test in (("spatialdata", looks_like_spatialdata), ("xenium", looks_like_xenium),
                       ("visium-hd", looks_like_visium_hd)):
        if test(p):
            return kind, p, None
    if p.is_dir():
        if (root := _found(find_her2st_root, p)) is not None:
            return "her2st", root, None
        if _found(find_visium_root, p) is not None:
            return "visium", p, None
        return None, p, None
    if not p.is_file():
        return None, p, None
    name = p.name.lower()
    if name.endswith(".h5ad"):
        return "h5ad", p, None
    if name == "sections.csv" and _found(find_her2st_root, p.parent) is not None:
        return "her2st", p.parent, None
    if p.parent.name in ("ST-cnts", "ST-spotfiles") and (
            root := _found(find_her2st_root, p.parent.parent)) is not None:
        sec = p.name.split(".")[0]
        sec = sec.removeprefix("ut_").removesuffix("_stdata_filtered").removesuffix("_selection")
        return "her2st", root, [sec]
    if name.endswith(".h5") and _found(find_visium_root, p.parent) is not None:
        return "visium", p.parent, None
    if p.parent.name == "spatial" and _found(find_visium_root, p.parent.parent) is not None:
        return "visium", p.parent.parent, None
    return None, p, None


def detect_st_kind(path: str | os.PathLike) -> str | None:
    """``'her2st'``, ``'visium'``, ``'h5ad'`` or None (not ST data we can read)."""
    return _resolve(path)[0]


# ----------------------------------------------------------------------------- reading


def restrict_genes(adata, genes: Sequence[str], source: Any):
    """``adata`` restricted to ``genes`` in that order; InputError naming ``source`` if missing."""
    genes = [str(g) for g in genes]
    missing = [g for g in genes if g not in adata.var_names]
    if missing:
        more = f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""
        raise InputError(source, f"{len(missing)} requested gene(s) not found: "
                                 f"{', '.join(missing[:10])}{more}")
    return adata[:, genes].copy()


def _rename_section(adata, old: str, new: str) -> None:
    adata.obs["section"] = pd.Categorical([new] * adata.n_obs)
    spatial = dict(adata.uns.get(SPATIAL) or {})
    if old in spatial:
        spatial = {(new if k == old else k): v for k, v in spatial.items()}
        adata.uns[SPATIAL] = spatial


def _dataset_name(root: Path) -> str:
    return root.stem if root.is_file() else root.name


def read_st(paths: str | os.PathLike | Sequence[str | os.PathLike],
            sections: Sequence[str] | str | None = None, *, images: bool = True,
            genes: Sequence[str] | None = None) -> dict[str, Any]:
    """Read one or several ST datasets into ``{section: AnnData}``.

    Sections whose names collide across datasets are renamed ``"<dataset>:<section>"`` (warning).
    ``sections`` keeps only those names (either form); unknown names -> :class:`InputError` listing
    the available ones. ``images`` decodes small display images into ``uns`` (full-resolution
    images are opened lazily by :func:`section_image`). ``genes`` restricts and orders var.
    """
    from .h5ad import read_st_h5ad
    from .her2st import list_her2st_sections, read_her2st
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise InputError(None, "no ST path given")
    if isinstance(sections, str):
        sections = [sections]
    wanted = None if sections is None else [str(s) for s in sections]

    resolved = []
    for p in paths:
        kind, root, implied = _resolve(p)
        if kind is None:
            why = "does not exist" if not Path(p).exists() else (
                "not a spatial-transcriptomics dataset (expected a her2st folder, a Space Ranger "
                "folder or an .h5ad file)")
            raise InputError(p, why)
        resolved.append((kind, root, implied))

    available: list[str] = []
    loaded: list[tuple[str, str, Any]] = []  # (dataset name, section, adata)
    for kind, root, implied in resolved:
        dname = _dataset_name(root)
        if kind == "her2st":
            names = list_her2st_sections(root)["section"].tolist()
            if implied:
                unknown = [s for s in implied if s not in names]
                if unknown:
                    raise InputError(root, f"unknown section(s) {', '.join(unknown)}; "
                                           f"available: {', '.join(names)}")
                names = implied
            available += names
            take = names if wanted is None else [
                s for s in names if s in wanted or f"{dname}:{s}" in wanted]
            if take:
                data = read_her2st(root, take, images=images, genes=genes)
                loaded += [(dname, s, a) for s, a in data.items()]
            continue
        if kind in ("visium", "visium-hd", "xenium"):
            adata = _read_one(kind, root, images)
            data = {str(adata.obs["section"].iloc[0]): adata}
        elif kind == "spatialdata":
            from .spatialdata import read_spatialdata

            data = read_spatialdata(root, images=images).adatas
        else:
            data = read_st_h5ad(root)
            if not images:
                for s, a in data.items():
                    a.uns[SPATIAL][s][IMAGES] = {}
        for s, a in data.items():
            if genes is not None:
                a = restrict_genes(a, genes, root)
            available.append(s)
            loaded.append((dname, s, a))

    # name collisions -> "<dataset>:<section>"
    counts = pd.Series([s for _, s, _ in loaded]).value_counts()
    out: dict[str, Any] = {}
    for dname, s, a in loaded:
        name = s
        if counts.get(s, 0) > 1:
            name = f"{dname}:{s}"
            warnings.warn(f"section {s} exists in several datasets; renamed to {name}",
                          STWarning, stacklevel=2)
            _rename_section(a, s, name)
        if name in out:
            raise InputError(dname, f"section {name} given twice (same dataset listed twice?)")
        out[name] = a
    avail_all = list(dict.fromkeys(available + list(out)))
    if wanted is not None:
        unknown = [w for w in wanted if w not in out
                   and not any(n.endswith(f":{w}") for n in out)]
        if unknown:
            src = paths[0] if len(paths) == 1 else ", ".join(map(str, paths))
            raise InputError(src, f"unknown section(s) {', '.join(unknown)}; "
                                  f"available: {', '.join(avail_all)}")
        ordered: dict[str, Any] = {}
        for w in wanted:
            for n, a in out.items():
                if n == w or n.endswith(f":{w}"):
                    ordered.setdefault(n, a)
        out = ordered
    if not out:
        raise InputError(paths[0], "no sections found")
    return out


def _read_one(kind: str, root: Path, images: bool):
    if kind == "xenium":
        from .xenium import read_xenium

        return read_xenium(root, images=images, transcripts=False, boundaries=False)["adata"]
    if kind == "visium-hd":
        from .visium_hd import read_visium_hd

        return read_visium_hd(root, images=images)
    from .visium import read_visium

    return read_visium(root, images=images)


# ----------------------------------------------------------------------------- images


def _as_display(arr: np.ndarray) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype.kind == "f":
        hi = float(np.nanmax(a)) if a.size else 1.0
        a = np.clip(a * (255.0 if hi <= 1.0 + 1e-6 else 1.0), 0, 255).round().astype(np.uint8)
    return a


def _is_blank(arr: np.ndarray) -> bool:
    a = np.asarray(arr)
    rgb = a[..., :3] if a.ndim == 3 else a
    return bool(rgb.size == 0 or rgb.max() == rgb.min())


def section_image(adata, section: str | None = None):
    """The section's H&E as an :class:`~napari_stexp.io.image.ImagePyramid` (lazy), or None.

    ``mpp`` is set so that image and spots share one µm frame (:mod:`napari_stexp.io.frame`):
    the source image (``metadata['source_image_path']``, ``image_scale`` image px per full-res
    px) gets ``mpp_fullres / image_scale``; without one, the in-memory ``hires`` (else
    ``lowres``) image is wrapped as one level with ``mpp_fullres / tissue_<res>_scalef``
    (``mpp_source = "spots"``). When the spots' µm/px is unknown, ``mpp`` is ``None``
    (``mpp_source = "unknown"``) and ``metadata['image_scale']`` keeps the image in the spots'
    full-resolution pixel frame (:func:`~napari_stexp.io.frame.frame_scale`).
    """
    import dask.array as da

    from .image import ImagePyramid
    from .wsi import open_image

    info = spatial_info(adata, section)
    meta, sf, images = info[METADATA], info[SCALEFACTORS], info[IMAGES]
    mpp0 = mpp_of(adata, info["library_id"])
    src = meta.get(SOURCE_IMAGE_PATH)
    if src:
        if Path(src).is_file():
            pyr = open_image(src)
            scale = float(meta.get(IMAGE_SCALE) or 1.0)
            file_mpp = pyr.mpp
            pyr.set_mpp(None if mpp0 is None else mpp0 / scale, "spots")
            pyr.metadata = dict(pyr.metadata or {})
            pyr.metadata.update({"file_mpp": file_mpp, IMAGE_SCALE: scale,
                                 "section": info["library_id"]})
            w_exp = meta.get("image_width")
            if w_exp and int(w_exp) != pyr.width:
                warnings.warn(f"{src}: image is {pyr.width} px wide, expected {w_exp}; spots may "
                              "not line up", STWarning, stacklevel=2)
            return pyr
        warnings.warn(f"{src}: source image not found; using the in-memory image",
                      STWarning, stacklevel=2)
    for res in ("hires", "lowres"):
        img = images.get(res)
        f = sf.get(f"tissue_{res}_scalef")
        if img is None or not f or _is_blank(img):
            continue
        arr = _as_display(img)
        return ImagePyramid(levels=[da.from_array(arr, chunks=(1024, 1024) + arr.shape[2:])],
                            path=None, name=f"{info['library_id']} {res}",
                            mpp=None if mpp0 is None else mpp0 / float(f), mpp_source="spots",
                            metadata={"resolution": res, "scalef": float(f),
                                      IMAGE_SCALE: float(f),
                                      "section": info["library_id"]})
    return None


# ----------------------------------------------------------------------------- summary


def section_summary(adata, section: str | None = None) -> dict[str, Any]:
    """What a reader found for one section (CLI ``info`` and the loader widget)."""
    info = spatial_info(adata, section)
    meta, sf, images = info[METADATA], info[SCALEFACTORS], info[IMAGES]
    obs = adata.obs
    if section is not None and "section" in obs:
        obs = obs[obs["section"].astype(str) == section]
    sec = section or info["library_id"] or (
        str(obs["section"].iloc[0]) if "section" in obs and len(obs) else None)
    label_counts: dict[str, int] = {}
    if "label" in obs:
        label_counts = {str(k): int(v) for k, v in
                        obs["label"].dropna().astype(str).value_counts().items()}
    mpp0 = mpp_of(adata, info["library_id"])
    known = mpp0 is not None
    image = image_size = image_mpp = None
    if meta.get(SOURCE_IMAGE_PATH):
        image = str(meta[SOURCE_IMAGE_PATH])
        scale = float(meta.get(IMAGE_SCALE) or 1.0)
        if meta.get("image_width") and meta.get("image_height"):
            image_size = (int(meta["image_height"]), int(meta["image_width"]))
        image_mpp = mpp0 / scale if known else None
    else:
        for res in ("hires", "lowres"):
            img = images.get(res)
            f = sf.get(f"tissue_{res}_scalef")
            if img is not None and f and not _is_blank(img):
                image = res
                image_size = tuple(int(v) for v in np.shape(img)[:2])
                image_mpp = mpp0 / float(f) if known else None
                break
    diam = sf.get(SPOT_DIAMETER_FULLRES)
    patient = None
    if "patient" in obs and len(obs):
        patient = str(obs["patient"].iloc[0])
    return {
        "section": sec,
        "patient": patient,
        "format": meta.get("format"),
        "n_spots": int(len(obs)),
        "n_genes": int(adata.n_vars),
        "n_labelled": int(sum(label_counts.values())),
        "label_counts": label_counts,
        "image": image,
        "image_size": image_size,
        "image_mpp": image_mpp,
        "mpp_fullres": mpp0,
        "spot_diameter_um": (float(diam) * mpp0) if (diam and known) else None,
    }
