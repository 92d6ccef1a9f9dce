"""Write one model folder of each kind with the code of a given napari-stexp checkout, plus the
outputs a reader must reproduce (``expected.npz``): the fixtures of ``test_model_folder.py``.

Run with the OLD code on the path, e.g. the main branch before the model-folder contract::

    git -C REPO archive <commit> src | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src python tests/models/make_legacy_folders.py tests/models/data/legacy

Models are randomly initialised (seeded), not trained: the layout and the weights are what is
tested, and this keeps each folder a few hundred kB.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch


def main(out: Path) -> None:
    from napari_stexp.models import batch_agnostic as ba
    from napari_stexp.models import betavae as bv
    from napari_stexp.models import gene_vae as gv
    from napari_stexp.models import mclstexp as mc
    from napari_stexp.models.backbones import build_image_encoder

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(6)]
    expected = {}

    # mclSTExp
    cfg = mc.MclstexpConfig(backbone="tinycnn", patch_size=32, input_size=32, projection_dim=16,
                            heads=2, dim_head=8, depth=1, pos_size_x=8, pos_size_y=8, top_k=3)
    net = mc.MclstexpNet(len(genes), cfg, load_weights=False).eval()
    ref = mc.Reference(embeddings=rng.normal(size=(10, 16)).astype(np.float32),
                       expression=rng.random((10, 6)).astype(np.float32),
                       sections=np.array(["S1"] * 10), obs_names=np.array([f"s{i}" for i in
                                                                           range(10)]),
                       positions=rng.integers(0, 8, (10, 2)))
    em = mc.ExpressionModel(net=net, config=cfg, genes=genes, reference=ref,
                            provenance={"seed": 0}, history=[{"epoch": 0, "loss": 1.0}])
    em.save(out / "mclstexp")
    patches = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    expected["patches"] = patches
    expected["mclstexp_embed"] = em.embed_patches(patches)

    # gene VAE (stand-alone) and the classifier holding one
    gcfg = gv.GeneVAEConfig(n_latent=4, n_hidden=8, epochs=1, batch_size=4)
    module = gv._build_module(len(genes), 2, 2, gcfg, np.zeros(2, np.float32),
                              np.ones(2, np.float32)).eval()
    fg = gv.FittedGeneVAE(module=module, config=gcfg, genes=genes, batches=["P0", "P1"],
                          classes=["a", "b"], history=[{"epoch": 0, "loss": 2.0}])
    fg.save(out / "gene_vae")
    counts = rng.poisson(3, (5, 6)).astype(np.float32)
    expected["counts"] = counts
    expected["gene_vae_embed"] = fg.embed_counts(counts, ["P0"] * 5)

    ccfg = ba.ClassifierConfig.tiny(projection_dim=8, gene={"n_latent": 4, "n_hidden": 8})
    enc, dim = build_image_encoder("tinycnn", None)
    cnet = ba._build_net(dim, 4, 2, ccfg, enc).eval()
    clf = ba.BatchAgnosticClassifier(net=cnet, config=ccfg, classes=["a", "b"], gene_model=fg,
                                     genes=genes, batches=["P0", "P1"], feature_dim=dim)
    clf.save(out / "classifier")
    cpatches = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    expected["classifier_patches"] = cpatches
    expected["classifier_proba"] = clf.predict_patches(cpatches, device="cpu")["proba"]

    # β-VAE with a gene VAE
    bcfg = bv.BVAEConfig.tiny()
    bm = bv.BVAEModel(config=bcfg, image_vae=bv.ImageBetaVAE(8, 8, 32).eval(),
                      gene_vae=bv.GeneVAE(len(genes), 8, (32,)).eval(), genes=genes,
                      classes=["x", "y"], latent_stats={"std": [1.0] * 8})
    bm.save(out / "bvae")
    crops = rng.random((2, 3, 32, 32)).astype(np.float32)
    expected["crops"] = crops
    with torch.no_grad():
        expected["bvae_mu"] = bm.image_vae.encode(torch.from_numpy(crops))[0].numpy()
    np.savez(out / "expected.npz", **expected)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
