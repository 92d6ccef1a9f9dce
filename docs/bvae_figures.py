"""Render the pictures of docs/betavae.md from a real β-VAE trained on the PBC images.

    python benchmarks/_bvae_knn.py --save-model /tmp/bvae_pbc      # trains (64 px, 40 epochs)
    python docs/bvae_figures.py --model /tmp/bvae_pbc --out docs/images

Adds the gene VAE on pbmc68k-reduced and the monocyte/lymphocyte alignment when the model has
none, then writes ``bvae_*.png``: reconstructions, traversals of a neutrophil and a lymphocyte,
the latent means (PCA), an immature granulocyte → neutrophil trajectory and a lymphocyte →
monocyte trajectory with its decoded expression trend.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

CLASS_MAP = {
    "monocyte": ["CD14+ Monocyte"],
    "lymphocyte": ["CD4+/CD45RO+ Memory", "CD4+/CD25 T Reg", "CD4+/CD45RA+/CD25- Naive T",
                   "CD8+ Cytotoxic T", "CD8+/CD45RA+ Naive Cytotoxic", "CD19+ B", "CD56+ NK"],
}


def main(argv=None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from napari_stexp.analysis.trajectory import latent_trajectory
    from napari_stexp.analysis.traversal import latent_traversal
    from napari_stexp.data.cells import CellCropDataset
    from napari_stexp.datasets import data_path
    from napari_stexp.models.betavae import BVAEModel

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--out", default=str(Path(__file__).parent / "images"))
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = BVAEModel.load(args.model)
    cells = CellCropDataset.from_folder(data_path("pbc-wbc"), size=model.config.image_size)
    if not model.has_expression:
        model.fit_genes(data_path("pbmc68k-reduced", "10x_pbmc68k_reduced.h5ad"),
                        class_map=CLASS_MAP, cells=cells)
        model.save(args.model)
    labels = cells.labels.astype(str)
    z = model.embed(cells)

    def first(cls, k=0):
        return int(np.flatnonzero(labels == cls)[k])

    # 1. reconstructions
    classes = cells.classes
    idx = [first(c, k) for c in classes for k in (0, 1)]
    rec = model.decode(z[idx])
    fig, axes = plt.subplots(2, len(idx), figsize=(len(idx) * 0.9, 2.2))
    for j, i in enumerate(idx):
        axes[0, j].imshow(cells.images[i])
        axes[1, j].imshow(rec[j])
        axes[0, j].set_title(labels[i][:6], fontsize=6)
    for a in axes.ravel():
        a.axis("off")
    fig.suptitle("PBC crops (top) and β-VAE reconstructions (bottom)", fontsize=8)
    fig.savefig(out / "bvae_reconstructions.png", dpi=150, bbox_inches="tight")
    plt.close(fig)

    # 2. traversals
    for cls in ("neutrophil", "lymphocyte"):
        trav = latent_traversal(model, cells, index=first(cls), n_steps=9, top=8)
        fig, axes = plt.subplots(len(trav.dims), len(trav.values),
                                 figsize=(len(trav.values) * 0.8, len(trav.dims) * 0.8))
        for r in range(len(trav.dims)):
            for s in range(len(trav.values)):
                ax = axes[r, s]
                ax.imshow(trav.images[r, s])
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"{trav.values[s]:+.1f}σ", fontsize=6)
                if s == 0:
                    ax.set_ylabel(f"dim {trav.dims[r]}\n#{r + 1}", fontsize=6)
        fig.suptitle(f"Traversal of a {cls}: top 8 of {model.latent_dim} dims", fontsize=8)
        fig.savefig(out / f"bvae_traversal_{cls}.png", dpi=150, bbox_inches="tight")
        plt.close(fig)

    # 3. latent means
    from sklearn.decomposition import PCA

    p2 = PCA(2, random_state=0).fit_transform(z)
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for c in classes:
        m = labels == c
        ax.scatter(p2[m, 0], p2[m, 1], s=6, label=c)
    ax.legend(fontsize=6, markerscale=2)
    ax.set_xlabel("PC 1 of latent means")
    ax.set_ylabel("PC 2")
    ax.set_title("480 PBC cells in the β-VAE latent space", fontsize=8)
    fig.savefig(out / "bvae_latent_pca.png", dpi=150, bbox_inches="tight")
    plt.close(fig)

    # 4. trajectories
    traj = latent_trajectory(model, z[first("ig")], z[first("neutrophil")], n_steps=8,
                             method="gp", reference=z)
    fig, axes = plt.subplots(1, len(traj.t), figsize=(len(traj.t) * 0.9, 1.2))
    for j, a in enumerate(axes):
        a.imshow(traj.images[j])
        a.axis("off")
        a.set_title(f"t={traj.t[j]:.2f}", fontsize=6)
    fig.suptitle("Immature granulocyte → neutrophil (GP path through the cells)", fontsize=8)
    fig.savefig(out / "bvae_trajectory_ig_neutrophil.png", dpi=150, bbox_inches="tight")
    plt.close(fig)

    traj = latent_trajectory(model, z[first("lymphocyte")], z[first("monocyte")], n_steps=8,
                             method="gp", reference=z)
    genes = ["LYZ", "S100A8", "S100A9", "CST3", "FCN1", "CD3E", "IL7R", "MS4A1"]
    genes = [g for g in genes if g in traj.expression.columns]
    fig = plt.figure(figsize=(7, 3.2))
    for j in range(len(traj.t)):
        a = fig.add_axes([0.02 + j * 0.12, 0.68, 0.11, 0.3])
        a.imshow(traj.images[j])
        a.axis("off")
    ax = fig.add_axes([0.08, 0.1, 0.6, 0.5])
    for g in genes:
        ax.plot(traj.t, traj.expression[g], marker=".", label=g)
    ax.set_xlabel("position along the path (lymphocyte → monocyte)")
    ax.set_ylabel("decoded log expression")
    ax.legend(fontsize=6, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.savefig(out / "bvae_trajectory_expression.png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    m = model.alignment.metrics
    print({"alignment": {k: m.get(k) for k in ("classes", "distance_before", "distance_after")},
           "active_dims": model.latent_stats.get("active_dims")})
    print(traj.expression[genes].round(2).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
