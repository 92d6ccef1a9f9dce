"""Spot-centred H&E patches for the expression model.

**Geometry and µm/px.** A patch covers ``patch_size`` pixels at the model's *training* µm/px
(``target_mpp``; the reference uses 224 px at full resolution, ≈155 µm for her2st at 0.69 µm/px).
On an image with another µm/px the same physical field (``patch_size × target_mpp`` µm) is read
— from the pyramid level closest to the needed scale — and resampled to ``input_size`` pixels, so
the network always sees the same µm per pixel. ``input_size`` may be smaller than ``patch_size``
(e.g. 64 px for quick CPU runs: the same field, downsampled). When an image's µm/px is unknown it
is assumed to equal the training µm/px (recorded in the dataset's ``notes``).

Spot centres come from ``obsm['spatial']`` through the slide frame
(:func:`~napari_stexp.io.frame.spots_rc_px` with the image's pyramid), so sections whose image is
a downscaled copy (``image_scale`` ≠ 1) line up too.

**Decoded once.** Patches are cut tile by tile (each image region is read once, not once per
spot) and kept as ``uint8`` ``(N, S, S, 3)``; with ``cache_dir`` they are also stored on disk,
keyed by image file (path, size, mtime), spot centres and geometry, so later runs skip decoding.

**Augmentation** (training only, on whole batches in torch): random 90° rotations and flips (the
8 symmetries of the square, no interpolation, no empty corners) and colour jitter (brightness,
contrast, saturation; 0.5 each by default as the reference's ``ColorJitter(0.5, 0.5, 0.5)``).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io.frame import array_grid as spot_positions
from ..io.frame import mpp_known, spot_pitch_px, spots_rc_px
from ..io.image import ImagePyramid
from ..progress import CancelFlag, ProgressFn, check_cancel, report


@dataclass(frozen=True)
class PatchSpec:
    """Patch geometry: ``patch_size`` px at ``target_mpp`` µm/px, fed as ``input_size`` px."""

    patch_size: int = 224
    input_size: int = 224
    target_mpp: float | None = None

    @property
    def field_um(self) -> float | None:
        return None if self.target_mpp is None else self.patch_size * self.target_mpp


class ConfigPatchSpec:
    """Mixin of the image models: their :class:`PatchSpec` read from ``self.config``
    (``patch_size``, ``input_size``, ``target_mpp``), the geometry every patch reader uses."""

    @property
    def patch_spec(self) -> PatchSpec:
        c = self.config
        return PatchSpec(c.patch_size, c.input_size, c.target_mpp)


image_mpp_known = mpp_known  # kept name; the rule lives in io/frame


def read_size_px(pyramid: ImagePyramid, spec: PatchSpec) -> float:
    """Side (level-0 px of ``pyramid``) of the region that covers one patch's field of view."""
    if spec.target_mpp is None or not mpp_known(pyramid):
        return float(spec.patch_size)
    return float(spec.patch_size) * float(spec.target_mpp) / float(pyramid.mpp)


spot_centres_px = spots_rc_px  # (adata, pyramid, section): centres in the pyramid's level-0 px


def check_geometry(pyramid: ImagePyramid, centres: np.ndarray, read_px: float,
                   source: Any) -> None:
    """InputError for a slide smaller than a patch or spot centres outside the image."""
    H, W = pyramid.height, pyramid.width
    # spots first: spots far outside the image also inflate the patch size (from their pitch)
    c = np.asarray(centres, dtype=np.float64)
    out = (c[:, 0] < 0) | (c[:, 0] >= H) | (c[:, 1] < 0) | (c[:, 1] >= W)
    if out.any():
        i = np.flatnonzero(out)[:3]
        ex = "; ".join(f"(row {c[j, 0]:.0f}, col {c[j, 1]:.0f})" for j in i)
        raise InputError(source, f"{int(out.sum())} of {len(c)} spot centre(s) lie outside the "
                                 f"{H}×{W} px image (e.g. {ex}); wrong image or coordinates?")
    if min(H, W) < read_px:
        raise InputError(source, f"image is {H}×{W} px, smaller than one patch "
                                 f"({int(round(read_px))} px at this image's µm/px)")


def _level_for(pyramid: ImagePyramid, read_px: float, out_size: int) -> int:
    return pyramid.best_level(max(read_px / max(out_size, 1), 1.0))


def _resize(patch: np.ndarray, size: int) -> np.ndarray:
    if patch.shape[0] == size and patch.shape[1] == size:
        return patch
    from PIL import Image

    return np.asarray(Image.fromarray(patch).resize((size, size), Image.Resampling.BILINEAR))


def _as_rgb(block: np.ndarray) -> np.ndarray:
    a = np.asarray(block)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.shape[2] == 4:
        a = a[..., :3]
    if a.dtype != np.uint8:
        hi = float(a.max()) if a.size else 1.0
        a = np.clip(a * (255.0 / hi if hi > 0 else 1.0), 0, 255).astype(np.uint8)
    return a


def iter_patch_tiles(pyramid: ImagePyramid, centres: np.ndarray, read_px: float,
                     out_size: int, *, tile: int = 2048, fill: int = 255,
                     cancel: CancelFlag | None = None
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(indices, uint8 patches (n, out, out, 3))`` tile by tile.

    Centres (level-0 (row, col)) are grouped into ``tile``-sized cells of the chosen level; each
    cell's region (plus half a patch of margin) is read once and all its patches are cut from it.
    Memory is bounded by one tile plus its patches. Outside the image is ``fill`` (white).
    """
    centres = np.asarray(centres, dtype=np.float64)
    if len(centres) == 0:
        return
    level = _level_for(pyramid, read_px, out_size)
    ds = float(pyramid.downsamples[level])
    side = max(int(round(read_px / ds)), 1)
    half = side / 2.0
    c = centres / ds
    cell = np.floor(c / tile).astype(np.int64)
    order = np.lexsort((cell[:, 1], cell[:, 0]))
    keys = cell[order]
    bounds = np.flatnonzero(np.any(np.diff(keys, axis=0) != 0, axis=1)) + 1
    for grp in np.split(order, bounds):
        check_cancel(cancel, "patch extraction")
        tops = np.floor(c[grp, 0] - half).astype(np.int64)
        lefts = np.floor(c[grp, 1] - half).astype(np.int64)
        r0, c0 = int(tops.min()), int(lefts.min())
        r1, c1 = int(tops.max()) + side, int(lefts.max()) + side
        region = _as_rgb(pyramid.read_region(r0, c0, r1 - r0, c1 - c0, level=level, fill=fill))
        out = np.empty((len(grp), out_size, out_size, 3), np.uint8)
        for j, (t, left) in enumerate(zip(tops - r0, lefts - c0, strict=True)):
            out[j] = _resize(region[t:t + side, left:left + side], out_size)
        yield grp, out


def extract_patches(pyramid: ImagePyramid, centres: np.ndarray, read_px: float,
                    out_size: int, *, source: Any = None, tile: int = 2048,
                    cache_dir: str | os.PathLike | None = None,
                    progress: ProgressFn | None = None, cancel: CancelFlag | None = None
                    ) -> np.ndarray:
    """All patches ``(N, out, out, 3)`` uint8 around ``centres`` (checked, cached on disk)."""
    centres = np.asarray(centres, dtype=np.float64)
    check_geometry(pyramid, centres, read_px, source or pyramid.path or pyramid.name)
    key = _patch_key(pyramid, centres, read_px, out_size)
    path = Path(cache_dir) / "patches" / f"{key}.npy" if (cache_dir and key) else None
    if path is not None and path.is_file():
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.shape == (len(centres), out_size, out_size, 3) and arr.dtype == np.uint8:
                report(progress, len(centres), len(centres), "patches (cached)")
                return arr
        except (OSError, ValueError):
            pass
    out = np.empty((len(centres), out_size, out_size, 3), np.uint8)
    done = 0
    try:
        for idx, patches in iter_patch_tiles(pyramid, centres, read_px, out_size, tile=tile,
                                             cancel=cancel):
            out[idx] = patches
            done += len(idx)
            report(progress, done, len(centres), "cutting patches")
    except InputError:
        raise
    except (OSError, ValueError) as exc:
        raise InputError(source or pyramid.path, f"cannot read image regions "
                                                 f"({type(exc).__name__}: {exc})") from exc
    if path is not None:
        from ..io._atomic import atomic_path

        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.save(fh, out, allow_pickle=False)
        except OSError as exc:  # a read-only cache is not fatal
            warnings.warn(f"{path}: cannot write patch cache ({exc})", stacklevel=2)
    return out


def _patch_key(pyramid: ImagePyramid, centres: np.ndarray, read_px: float, out_size: int
               ) -> str | None:
    """Cache key from the image file's identity + centres + geometry; None for in-memory data."""
    if not pyramid.path or not Path(pyramid.path).is_file():
        return None
    st = Path(pyramid.path).stat()
    h = hashlib.sha256()
    h.update(f"v1|{Path(pyramid.path).resolve()}|{st.st_size}|{st.st_mtime_ns}|"
             f"{pyramid.shape}|{read_px:.4f}|{out_size}".encode())
    h.update(np.round(np.asarray(centres, np.float64), 3).tobytes())
    return h.hexdigest()[:32]


# ----------------------------------------------------------------------------- positions
# spot_pitch_px and spot_positions (= io.frame.array_grid) are imported from io/frame above.

__all__ = ["PatchSpec", "SpotPatchDataset", "augment_batch", "check_geometry", "extract_patches",
           "image_mpp_known", "iter_patch_tiles", "open_section_image", "read_size_px",
           "spot_centres_px", "spot_pitch_px", "spot_positions", "to_float_nchw"]


# ----------------------------------------------------------------------------- dataset


@dataclass
class SpotPatchDataset:
    """Patches (uint8, decoded once) + targets + positions of the spots of one or more sections.

    Index ``i`` gives a dict with ``image`` (uint8 ``(S, S, 3)``), ``expression``, ``position``;
    :meth:`batches` yields torch batches (augmented for training) without a DataLoader: the
    patches are already in memory, so the per-batch work is one gather + vectorised augmentation.
    """

    patches: np.ndarray
    expression: np.ndarray | None
    positions: np.ndarray
    sections: np.ndarray
    obs_names: np.ndarray
    spec: PatchSpec = field(default_factory=PatchSpec)
    notes: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.patches.shape[0])

    def __getitem__(self, i: int) -> dict:
        return {"image": self.patches[i],
                "expression": None if self.expression is None else self.expression[i],
                "position": self.positions[i]}

    @classmethod
    def from_sections(cls, adatas: Mapping[str, Any], panel: Sequence[str] | None,
                      spec: PatchSpec, *, images: Mapping[str, ImagePyramid] | None = None,
                      cache_dir: str | os.PathLike | None = None,
                      progress: ProgressFn | None = None, cancel: CancelFlag | None = None
                      ) -> SpotPatchDataset:
        """Cut patches for every section (its image from ``images`` or ``section_image``)."""
        from .genes import panel_targets

        parts: dict[str, list] = {"p": [], "e": [], "pos": [], "sec": [], "obs": []}
        notes: dict[str, Any] = {"sections": {}}
        total = sum(a.n_obs for a in adatas.values())
        done = 0
        for name, adata in adatas.items():
            pyr = (images or {}).get(name)
            if pyr is None:
                pyr = open_section_image(adata, name)
            centres = spot_centres_px(adata, pyr, None)
            read_px = read_size_px(pyr, spec)

            def sub(d, t, m, _done=done, _name=name):
                report(progress, _done + d, total, f"patches {_name}: {m}")

            p = extract_patches(pyr, centres, read_px, spec.input_size, source=f"section {name}",
                                cache_dir=cache_dir, progress=sub, cancel=cancel)
            done += adata.n_obs
            parts["p"].append(p)
            if panel is not None:
                parts["e"].append(panel_targets(adata, panel, source=f"section {name}",
                                                    library="panel"))
            parts["pos"].append(spot_positions(adata))
            parts["sec"].append(np.array([name] * adata.n_obs, dtype=object))
            parts["obs"].append(np.asarray(adata.obs_names, dtype=object))
            notes["sections"][name] = {
                "image": pyr.path or pyr.name, "image_mpp": pyr.mpp,
                "mpp_known": image_mpp_known(pyr), "read_px": read_px,
                "resampled": abs(read_px - spec.input_size) > 0.5}
        return cls(patches=np.concatenate(parts["p"]),
                   expression=np.concatenate(parts["e"]) if panel is not None else None,
                   positions=np.concatenate(parts["pos"]),
                   sections=np.concatenate(parts["sec"]),
                   obs_names=np.concatenate(parts["obs"]), spec=spec, notes=notes)

    def subset(self, mask: np.ndarray) -> SpotPatchDataset:
        m = np.asarray(mask)
        return SpotPatchDataset(self.patches[m],
                                None if self.expression is None else self.expression[m],
                                self.positions[m], self.sections[m], self.obs_names[m],
                                self.spec, dict(self.notes))

    def batches(self, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                augment: bool = False, jitter: tuple[float, float, float] = (0.5, 0.5, 0.5),
                drop_last: bool = False, channels_last: bool = False) -> Iterator[dict]:
        """Yield dicts of torch tensors: ``image`` float ``(B, 3, S, S)`` in [0, 1],
        ``expression``, ``position``, ``index``."""
        import torch

        n = len(self)
        rng = np.random.default_rng(seed)
        order = rng.permutation(n) if shuffle else np.arange(n)
        gen = torch.Generator().manual_seed(int(seed))
        stop = n - (n % batch_size) if (drop_last and n >= batch_size) else n
        for s in range(0, stop, batch_size):
            idx = order[s:s + batch_size]
            x = torch.from_numpy(self.patches[idx])
            x = to_float_nchw(x)
            if augment:
                x = augment_batch(x, gen, jitter=jitter)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            b = {"image": x, "position": torch.from_numpy(self.positions[idx]),
                 "index": torch.from_numpy(idx.astype(np.int64))}
            if self.expression is not None:
                b["expression"] = torch.from_numpy(self.expression[idx])
            yield b


def open_section_image(adata, name: str) -> ImagePyramid:
    """The section's H&E (lazy) or an InputError saying it has none."""
    from ..io.st import section_image

    pyr = section_image(adata)
    if pyr is None:
        raise InputError(f"section {name}", "has no H&E image (the expression model needs one "
                                            "image per training/evaluation section)")
    return pyr


def to_float_nchw(x_uint8_nhwc):
    """uint8 ``(B, H, W, 3)`` tensor -> float32 ``(B, 3, H, W)`` in [0, 1]."""
    return x_uint8_nhwc.permute(0, 3, 1, 2).float().div_(255.0)


def augment_batch(x, generator=None, jitter: tuple[float, float, float] = (0.5, 0.5, 0.5)):
    """Random dihedral symmetry (rot90 × flip) and colour jitter per image of a float batch."""
    import torch

    B = x.shape[0]
    k = torch.randint(0, 4, (B,), generator=generator)
    flip = torch.randint(0, 2, (B,), generator=generator).bool()
    out = torch.empty_like(x)
    for kk in range(4):
        for ff in (False, True):
            m = (k == kk) & (flip == ff)
            if not bool(m.any()):
                continue
            v = x[m]
            if ff:
                v = torch.flip(v, dims=(3,))
            out[m] = torch.rot90(v, kk, dims=(2, 3)) if kk else v
    b, c, s = jitter
    if b or c or s:
        def factor(a):
            return (1 + (torch.rand(B, 1, 1, 1, generator=generator) * 2 - 1) * a).clamp_min(0)

        out = out * factor(b)
        grey = (0.299 * out[:, 0:1] + 0.587 * out[:, 1:2] + 0.114 * out[:, 2:3])
        cf = factor(c)
        out = (out - grey.mean(dim=(2, 3), keepdim=True)) * cf + grey.mean(dim=(2, 3),
                                                                             keepdim=True)
        grey = (0.299 * out[:, 0:1] + 0.587 * out[:, 1:2] + 0.114 * out[:, 2:3])
        out = (out - grey) * factor(s) + grey
        out = out.clamp_(0.0, 1.0)
    return out
