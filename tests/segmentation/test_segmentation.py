"""Segmentation: synthetic smears with known cells (count, IoU, touching cells split), tiled ==
untiled, input checks, real BCCD detection, detection metrics, Mask R-CNN (tiny, weights=None),
cellpose availability and the ``segment`` CLI in both forms."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from napari_stexp.data.synthetic_smear import make_synthetic_smear
from napari_stexp.errors import CancelledError, InputError, StexpError
from napari_stexp.segmentation import OBJECT_COLUMNS, segment
from napari_stexp.segmentation.tiling import tile_slide


@pytest.fixture(scope="module")
def smear():
    return make_synthetic_smear(seed=0)


@pytest.fixture(scope="module")
def smear_result(smear):
    return segment(smear[0], method="classical")


def best_match(gt: np.ndarray, pred: np.ndarray) -> dict[int, tuple[int, float]]:
    """For each true label: (best overlapping predicted label, IoU)."""
    out = {}
    for g in np.unique(gt):
        if g == 0:
            continue
        m = gt == g
        ov = pred[m]
        ov = ov[ov > 0]
        if ov.size == 0:
            out[int(g)] = (0, 0.0)
            continue
        p = int(np.bincount(ov).argmax())
        mp = pred == p
        out[int(g)] = (p, float((m & mp).sum() / (m | mp).sum()))
    return out


# --------------------------------------------------------------------------- synthetic smear


def test_synthetic_smear_is_deterministic_and_plausible(smear):
    image, labels, table = smear
    image2, labels2, _ = make_synthetic_smear(seed=0)
    assert np.array_equal(image, image2) and np.array_equal(labels, labels2)
    assert image.dtype == np.uint8 and image.shape == (768, 1024, 3)
    assert labels.dtype == np.int32 and labels.max() == len(table) == 6
    assert (table["touching"] > 0).sum() >= 2  # at least one touching pair
    bg = image[labels == 0].mean(axis=0)
    nuc = image[labels > 0].min(axis=0)
    assert bg.mean() > 200  # light background
    assert nuc[2] > nuc[0]  # purple nuclei: more blue than red


def test_classical_finds_the_white_cells(smear, smear_result):
    image, labels, table = smear
    res = smear_result
    assert res.labels.dtype == np.int32 and res.labels.shape == labels.shape
    assert res.n_objects == len(table)
    m = best_match(labels, res.labels)
    ious = np.array([v[1] for v in m.values()])
    assert ious.min() > 0.6 and ious.mean() > 0.8, ious
    assert len({v[0] for v in m.values()}) == len(table)  # one prediction per cell
    t = res.table
    assert list(t.columns[:9]) == OBJECT_COLUMNS
    assert t["label"].tolist() == list(range(1, len(t) + 1))
    for r in t.itertuples():  # table agrees with the label image
        ys, xs = np.nonzero(res.labels == r.label)
        assert r.area == len(ys) and r.ymin == ys.min() and r.xmax == xs.max() + 1
        assert abs(r.y - ys.mean()) < 1e-6 and 0 <= r.score <= 1


def test_touching_cells_are_split(smear, smear_result):
    _, labels, table = smear
    m = best_match(labels, smear_result.labels)
    pairs = table[table["touching"] > table["label"]]
    assert len(pairs) >= 1
    for r in pairs.itertuples():
        a, b = m[r.label][0], m[r.touching][0]
        assert a != b and a > 0 and b > 0
        assert m[r.label][1] > 0.6 and m[r.touching][1] > 0.6
    # without the watershed split (merging the pair's labels) the IoU would collapse:
    merged = np.where(np.isin(labels, [pairs.iloc[0].label, pairs.iloc[0].touching]),
                      pairs.iloc[0].label, labels)
    mm = best_match(merged, smear_result.labels)
    assert mm[int(pairs.iloc[0].label)][1] < 0.6


def test_other_seeds_count_and_iou():
    for seed in (1, 2):
        image, labels, table = make_synthetic_smear(seed=seed)
        res = segment(image)
        assert res.n_objects == len(table)
        ious = [v[1] for v in best_match(labels, res.labels).values()]
        assert np.mean(ious) > 0.75


def test_nuclei_mode_splits_touching_nuclei():
    """H&E-like tile: dark purple nuclei (some touching) on pink stroma."""
    rng = np.random.default_rng(1)
    H, W = 160, 200
    img = np.empty((H, W, 3), float)
    img[:] = (230, 170, 200)
    yy, xx = np.mgrid[0:H, 0:W]
    centres = [(30, 30), (30, 47), (100, 60), (120, 150), (60, 140), (60, 157), (130, 30)]
    truth = np.zeros((H, W), int)
    for k, (cy, cx) in enumerate(centres, 1):
        d = np.hypot(yy - cy, xx - cx)
        inside = d < 9.5
        img[inside] = (90, 60, 150)
        truth[inside & (truth == 0)] = k
    img += rng.normal(0, 4, img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    res = segment(img, mode="nuclei", stain="hematoxylin", diameter=19)
    assert res.n_objects == len(centres)
    res2 = segment(img, mode="nuclei")  # purple channel and estimated size work too
    assert res2.n_objects == len(centres)


# --------------------------------------------------------------------------- tiling


def test_tile_slide_partitions_the_image():
    tiles = list(tile_slide((250, 330, 3), 100, 20))
    assert len(tiles) == 3 * 4
    cover = np.zeros((250, 330), int)
    for t in tiles:
        cover[t.row:t.row + t.height, t.col:t.col + t.width] += 1
        assert t.r0 == max(t.row - 20, 0) and t.c1 == min(t.col + t.width + 20, 330)
    assert (cover == 1).all()
    with pytest.raises(InputError):
        list(tile_slide((10, 10), 0, 0))


def test_tiled_equals_untiled():
    image, labels, table = make_synthetic_smear((512, 768), n_wbc=10, n_rbc=80, seed=5)
    tile = 150
    # the grid cuts through some cells
    cut = [r for r in table.itertuples()
           if (r.ymin // tile != (r.ymax - 1) // tile) or (r.xmin // tile != (r.xmax - 1) // tile)]
    assert len(cut) >= 3
    full = segment(image)
    progress = []
    tiled = segment(image, tile_size=tile, progress=lambda d, t, m: progress.append((d, t)))
    assert tiled.metadata["tiled"] and tiled.metadata["n_tiles"] == 4 * 6
    assert progress[-1] == (24, 24) and len(progress) >= 24
    assert tiled.n_objects == full.n_objects == len(table)
    m = best_match(full.labels, tiled.labels)
    assert len({v[0] for v in m.values()}) == full.n_objects  # no cell split or duplicated
    assert min(v[1] for v in m.values()) > 0.9
    t = tiled.table
    assert t["label"].tolist() == list(range(1, len(t) + 1))
    assert (t["area"].to_numpy() == np.bincount(tiled.labels.ravel())[1:]).all()


def test_tiled_to_zarr_and_pyramid_input(tmp_path):
    from PIL import Image

    from napari_stexp.io.smears import read_smear

    image, _, _ = make_synthetic_smear((384, 512), n_wbc=5, n_rbc=40, seed=2)
    Image.fromarray(image).save(tmp_path / "s.png")
    pyr = read_smear(tmp_path / "s.png")
    a = segment(image, tile_size=200)
    b = segment(pyr, tile_size=200, labels_out=tmp_path / "labels.zarr")
    assert hasattr(b.labels, "compute")  # lazy, written tile by tile
    assert np.array_equal(np.asarray(b.labels), a.labels)
    assert (tmp_path / "labels.zarr").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_cancel_stops_segmentation(smear):
    ev = threading.Event()
    ev.set()
    with pytest.raises(CancelledError):
        segment(smear[0], tile_size=256, cancel=ev)


# --------------------------------------------------------------------------- input checks


def test_grey_and_rgba_input(smear, smear_result):
    image, labels, table = smear
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    assert np.array_equal(segment(rgba).labels, smear_result.labels)
    grey = image.mean(axis=-1).astype(np.uint8)
    res = segment(grey)
    assert res.metadata["stain"] == "dark"
    found = [v[1] for v in best_match(labels, res.labels).values()]
    assert np.mean(np.array(found) > 0.3) >= 0.8  # intensity alone still finds the cells
    with pytest.raises(InputError, match="needs an RGB image"):
        segment(grey, stain="purple")


@pytest.mark.parametrize("shape", [(50,), (40, 50, 2), (3, 40, 50, 3), (40, 50, 5)])
def test_bad_shapes(shape):
    with pytest.raises(InputError, match="expected a 2-D grey"):
        segment(np.zeros(shape, np.uint8))


def test_unknown_method_and_bad_values(smear):
    with pytest.raises(InputError, match="unknown segmentation method 'nope'"):
        segment(smear[0], method="nope")
    with pytest.raises(InputError, match="unknown mode"):
        segment(smear[0], mode="blobs")
    with pytest.raises(InputError, match="NaN"):
        segment(np.full((20, 20), np.nan))


def test_empty_image_gives_no_cells():
    res = segment(np.full((120, 160, 3), 230, np.uint8))
    assert res.n_objects == 0 and res.labels.max() == 0
    assert list(res.table.columns) == OBJECT_COLUMNS


# --------------------------------------------------------------------------- detection metrics


def test_box_matching():
    from napari_stexp.evaluation.detection import box_iou, match_boxes, prf

    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)
    pred = np.array([[0, 0, 10, 10], [21, 21, 31, 31], [50, 50, 60, 60], [0, 0, 10, 11]], float)
    iou = box_iou(pred, gt)
    assert iou[0, 0] == 1.0 and iou[2].max() == 0 and abs(iou[1, 1] - 81 / 119) < 1e-9
    m = match_boxes(pred, gt, scores=np.array([0.9, 0.8, 0.7, 0.95]))
    assert (m.tp, m.fp, m.fn) == (2, 2, 0)
    assert (3, 0) in [(p, g) for p, g, _ in m.pairs]  # highest score takes the box
    p, r, f = prf(m.tp, m.fp, m.fn)
    assert (p, r) == (0.5, 1.0) and abs(f - 2 / 3) < 1e-12
    # greedy vs optimal: greedy takes the pair with the best IoU first and strands one box
    gt2 = np.array([[0, 0, 10, 10], [6, 0, 16, 10]], float)
    pred2 = np.array([[3, 0, 13, 10], [0, 0, 9, 10]], float)
    greedy = match_boxes(pred2, gt2, scores=np.array([1.0, 0.5]), iou_threshold=0.3)
    hung = match_boxes(pred2, gt2, iou_threshold=0.3, method="hungarian")
    assert greedy.tp == 1 and hung.tp == 2


@pytest.mark.realdata
def test_classical_detects_bccd_white_cells(bccd_dir):
    from napari_stexp.evaluation.detection import evaluate_detection

    ids = [f"BloodImage_{i:05d}" for i in (0, 1, 2, 3, 5, 6, 7, 8, 9, 11)]
    rep = evaluate_detection(bccd_dir / "smears" / "JPEGImages",
                             bccd_dir / "smears" / "Annotations", "classical",
                             image_ids=ids)
    total = rep.iloc[-1]
    assert total["image"] == "TOTAL" and total["n_gt"] >= 9
    assert total["recall"] >= 0.8 and total["precision"] >= 0.7, rep
    assert total["mean_iou"] > 0.6


# --------------------------------------------------------------------------- Mask R-CNN


@pytest.fixture(scope="module")
def tiny_smear():
    return make_synthetic_smear((128, 160), n_wbc=2, n_rbc=10, seed=1, wbc_radius=20,
                                rbc_radius=10)


def test_maskrcnn_tiny_forward_with_roi_features(tiny_smear):
    import torch

    torch.set_num_threads(1)
    image = tiny_smear[0]
    res = segment(image, "maskrcnn", backbone="tiny", weights=None, min_size=128, max_size=160,
                  score_threshold=0.0, return_roi_features=True, device="cpu")
    assert res.labels.shape == image.shape[:2] and res.labels.dtype == np.int32
    assert list(res.table.columns) == OBJECT_COLUMNS + ["class"]
    assert res.roi_features is not None and res.roi_features.shape == (res.n_objects, 128)
    if res.n_objects:
        assert set(res.table["class"]) == {"WBC"}
        assert (res.table["score"].diff().dropna() <= 1e-6).all()  # painted best first


def test_maskrcnn_train_step_save_and_reload(tiny_smear, tmp_path):
    import torch

    from napari_stexp.segmentation.maskrcnn import train_maskrcnn

    torch.set_num_threads(1)
    image, labels, _ = tiny_smear
    model, hist = train_maskrcnn([image], label_images=[labels], backbone="tiny", epochs=1,
                                 batch_size=1, min_size=128, max_size=160, device="cpu",
                                 out_dir=tmp_path)
    assert len(hist.epochs) == 1 and np.isfinite(hist.losses[0]) and hist.losses[0] > 0
    assert (tmp_path / "maskrcnn.pt").exists() and (tmp_path / "last.pt").exists()
    a = segment(image, "maskrcnn", model=model, score_threshold=0.0, device="cpu",
                classes=("WBC",), backbone="tiny")
    b = segment(image, "maskrcnn", weights=tmp_path / "maskrcnn.pt", score_threshold=0.0,
                device="cpu")
    assert b.metadata["backbone"] == "tiny"
    assert np.array_equal(a.labels, b.labels)
    # trained parameters actually changed from a fresh model with the same seed
    with pytest.raises(InputError, match="not found"):
        segment(image, "maskrcnn", weights=tmp_path / "nope.pt", device="cpu")


def test_maskrcnn_masks_from_boxes(tiny_smear):
    from napari_stexp.segmentation.maskrcnn import masks_from_boxes, targets_from_boxes

    image, labels, table = tiny_smear
    boxes = pd.DataFrame({"name": "WBC", "xmin": table["xmin"] - 2, "ymin": table["ymin"] - 2,
                          "xmax": table["xmax"] + 2, "ymax": table["ymax"] + 2})
    masks = masks_from_boxes(image, boxes)
    assert masks.shape == (len(table), *labels.shape)
    for k, r in enumerate(table.itertuples()):
        g = labels == r.label
        assert (masks[k] & g).sum() / (masks[k] | g).sum() > 0.6
    boxes.loc[len(boxes)] = ["RBC", 0, 0, 10, 10]
    t = targets_from_boxes(image, boxes, ("WBC",))
    assert t["boxes"].shape == (len(table), 4) and (t["labels"] == 1).all()


def test_maskrcnn_weight_errors():
    from napari_stexp.segmentation.maskrcnn import build_maskrcnn

    with pytest.raises(InputError, match="no pretrained weights"):
        build_maskrcnn("tiny", weights="imagenet")
    with pytest.raises(InputError, match="resnet50 backbone only"):
        build_maskrcnn("resnet18", weights="coco")
    with pytest.raises(InputError, match="unknown Mask R-CNN backbone"):
        build_maskrcnn("vgg")


def test_cellpose_backend_reports_missing_dependency(smear):
    from napari_stexp.segmentation.cellpose_backend import cellpose_available

    if cellpose_available():
        pytest.skip("cellpose is installed here")
    with pytest.raises(StexpError, match=r"pip install napari-stexp\[cellpose\]"):
        segment(smear[0], method="cellpose")


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_main(monkeypatch):
    from napari_stexp import cli

    mod = "napari_stexp.commands.segment"
    if mod not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, mod])
    return cli.main


def test_cli_segment_writes_labels_and_objects(cli_main, tmp_path, smear, capsys):
    import tifffile
    from PIL import Image

    image, labels, table = smear
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(image[:400, :500]).save(tmp_path / "b.png")
    rc = cli_main(["segment", str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                   "--method", "classical", "--out", str(tmp_path / "out")])
    assert rc == 0
    for stem in ("a", "b"):
        d = tmp_path / "out" / stem
        objs = pd.read_csv(d / "objects.csv")
        assert list(objs.columns) == ["label", "y", "x", "ymin", "xmin", "ymax", "xmax",
                                      "area", "score"]
        lab = tifffile.imread(d / "labels.tif")
        assert lab.dtype == np.int32 and lab.max() == len(objs)
        assert (np.bincount(lab.ravel())[1:] == objs["area"].to_numpy()).all()
    assert len(pd.read_csv(tmp_path / "out" / "a" / "objects.csv")) == len(table)
    assert "a.png: 6 object(s)" in capsys.readouterr().out


def test_cli_segment_zarr_tiled(cli_main, tmp_path, smear):
    from PIL import Image

    from napari_stexp.io.export import read_ome_zarr

    Image.fromarray(smear[0]).save(tmp_path / "a.png")
    rc = cli_main(["segment", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"),
                   "--format", "zarr", "--tile-size", "300"])
    assert rc == 0
    pyr = read_ome_zarr(tmp_path / "o" / "a" / "labels.ome.zarr")
    lab = np.asarray(pyr.levels[0])
    objs = pd.read_csv(tmp_path / "o" / "a" / "objects.csv")
    assert lab.shape == smear[0].shape[:2] and lab.max() == len(objs) == 6
    assert [p.name for p in (tmp_path / "o" / "a").iterdir()
            if p.name.startswith(".")] == []


@pytest.mark.realdata
def test_cli_segment_evaluate(cli_main, tmp_path, bccd_dir, capsys):
    out = tmp_path / "report.csv"
    rc = cli_main(["segment", "evaluate", "--images", str(bccd_dir / "smears" / "JPEGImages"),
                   "--boxes", str(bccd_dir / "smears" / "Annotations"), "--method",
                   "classical", "--limit", "3", "--out", str(out)])
    assert rc == 0
    rep = pd.read_csv(out)
    assert rep["image"].tolist()[-1] == "TOTAL" and len(rep) == 4
    assert {"precision", "recall", "f1", "tp", "fp", "fn"} <= set(rep.columns)
    assert "F1" in capsys.readouterr().out


def test_cli_errors(cli_main, tmp_path, capsys):
    assert cli_main(["segment", "evaluate", "extra.png", "--images", "x",
                     "--out", str(tmp_path / "r.csv")]) == 2
    assert "takes no image arguments" in capsys.readouterr().err
    assert cli_main(["segment", "evaluate", "--out", str(tmp_path / "r.csv")]) == 2
    assert "needs --images" in capsys.readouterr().err
    assert cli_main(["segment", str(tmp_path / "missing.png"), "--out", str(tmp_path)]) == 2
    assert "missing.png: image file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    np.save(tmp_path / "x.npy", np.zeros(3))
    bad.write_bytes(b"not a png")
    assert cli_main(["segment", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "bad.png" in capsys.readouterr().err
    assert not (tmp_path / "o" / "bad").exists()
