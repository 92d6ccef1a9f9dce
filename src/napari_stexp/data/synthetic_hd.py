"""A synthetic Visium HD Space Ranger run (``binned_outputs/square_NNNum``) for tests and benchmarks.

Realistic in layout and scale: a square grid of bins (700,000 at 8 µm by default, i.e. a
6.7 mm × 6.7 mm capture area), barcodes ``s_008um_RRRRR_CCCCC-1``, a tissue disc (bins outside
it are ``in_tissue = 0`` and absent from the filtered matrix), sparse Poisson-like counts whose
mean follows a smooth spatial pattern per gene, ``tissue_positions.parquet``, a 10x HDF5 matrix and
scalefactors with ``microns_per_pixel`` and ``bin_size_um``. Generation is vectorised (a few
seconds for 700,000 bins).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

MPP = 0.2738  # µm per full-resolution pixel, as in the 10x mouse brain HD run


def write_visium_hd(root: str | os.PathLike, *, n_bins: int = 700_000, bin_size_um: int = 8,
                    n_genes: int = 500, nnz_per_bin: int = 12, seed: int = 0,
                    lowres: bool = True) -> Path:
    """Write ``root/binned_outputs/square_<bin>um``; returns that bin folder."""
    import h5py
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_bins / (np.pi / 4)))) + 2  # the tissue disc holds n_bins
    rows, cols = np.divmod(np.arange(side * side, dtype=np.int64), side)
    c = (side - 1) / 2
    d2 = (rows - c) ** 2 + (cols - c) ** 2
    order = np.argsort(d2, kind="stable")
    in_tissue = np.zeros(side * side, dtype=np.int32)
    in_tissue[order[:n_bins]] = 1
    pitch_px = bin_size_um / MPP
    folder = Path(root) / "binned_outputs" / f"square_{bin_size_um:03d}um"
    spatial = folder / "spatial"
    spatial.mkdir(parents=True, exist_ok=True)
    barcodes = np.char.add(np.char.add(np.char.add(f"s_{bin_size_um:03d}um_",
                                                   np.char.zfill(rows.astype(str), 5)),
                                       np.char.add("_", np.char.zfill(cols.astype(str), 5))),
                           "-1")
    table = pa.table({"barcode": barcodes.astype(object), "in_tissue": in_tissue,
                      "array_row": rows, "array_col": cols,
                      "pxl_row_in_fullres": (rows + 0.5) * pitch_px + 100.0,
                      "pxl_col_in_fullres": (cols + 0.5) * pitch_px + 100.0})
    pq.write_table(table, spatial / "tissue_positions.parquet")
    full = side * pitch_px + 200.0
    lowres_f = 600.0 / full
    sf = {"spot_diameter_fullres": pitch_px, "bin_size_um": float(bin_size_um),
          "microns_per_pixel": MPP, "tissue_hires_scalef": 6000.0 / full,
          "tissue_lowres_scalef": lowres_f, "fiducial_diameter_fullres": 165.0 / MPP,
          "regist_target_img_scalef": 6000.0 / full}
    (spatial / "scalefactors_json.json").write_text(json.dumps(sf, indent=2))
    if lowres:
        from PIL import Image

        n = 600
        yy, xx = np.mgrid[0:n, 0:n] / n - 0.5
        disc = (yy ** 2 + xx ** 2) < 0.23
        img = np.full((n, n, 3), 240, np.uint8)
        img[disc] = (200 + 40 * np.sin(20 * xx[disc])[:, None] * np.array([1, -1, 0.5])).astype(
            np.uint8)
        Image.fromarray(img).save(spatial / "tissue_lowres_image.png")
    # counts: bins × genes, gene g concentrated on a smooth band; written as 10x CSC (genes × bins)
    keep = np.flatnonzero(in_tissue)
    nb = keep.size
    genes = rng.integers(0, n_genes, size=(nb, nnz_per_bin), dtype=np.int32)
    genes.sort(axis=1)
    dup = np.zeros_like(genes, dtype=bool)
    dup[:, 1:] = genes[:, 1:] == genes[:, :-1]
    phase = (rows[keep] / side)[:, None] * (1 + genes % 7) + (cols[keep] / side)[:, None]
    lam = 1.0 + 3.0 * (0.5 + 0.5 * np.sin(2 * np.pi * phase))
    vals = rng.poisson(lam).astype(np.int32) + 1
    vals[dup] = 0
    nz = vals > 0
    counts_per_bin = nz.sum(axis=1)
    indptr = np.concatenate([[0], np.cumsum(counts_per_bin)]).astype(np.int64)
    data, indices = vals[nz], genes[nz]
    names = np.array([f"Gene{g:05d}" for g in range(n_genes)])
    ids = np.array([f"ENSMUSG{g:011d}" for g in range(n_genes)])
    with h5py.File(folder / "filtered_feature_bc_matrix.h5", "w") as f:
        f.attrs["filetype"] = "matrix"
        f.attrs["library_ids"] = np.array([b"synthetic_hd"])
        f.attrs["software_version"] = "spaceranger-3.0.0 (synthetic)"
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=barcodes[keep].astype("S"))
        g.create_dataset("data", data=data)
        g.create_dataset("indices", data=indices)
        g.create_dataset("indptr", data=indptr)
        g.create_dataset("shape", data=np.array([n_genes, nb], dtype=np.int32))
        ft = g.create_group("features")
        ft.create_dataset("id", data=ids.astype("S"))
        ft.create_dataset("name", data=names.astype("S"))
        ft.create_dataset("feature_type", data=np.array([b"Gene Expression"] * n_genes))
        ft.create_dataset("genome", data=np.array([b"mm10"] * n_genes))
    return folder
