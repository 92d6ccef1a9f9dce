"""Mask R-CNN backend (torchvision): inference, training from boxes or label images, weights.

- ``build_maskrcnn(backbone, num_classes, weights)``: ``resnet50`` (torchvision's
  ``maskrcnn_resnet50_fpn`` layout), ``resnet18``/``resnet34`` FPN (lighter), or ``tiny`` (a
  four-layer CNN for tests). ``weights``: ``None`` (random init), ``'imagenet'`` (backbone from
  torchvision's weights API), ``'coco'`` (whole detector, resnet50 only; heads are replaced when
  the class count differs) or a local file: a checkpoint written by :func:`train_maskrcnn`
  (config + state dict) or a torchvision state-dict ``.pth``. Downloads need a network or
  torch's hub cache; otherwise a clear error says how to pass a local file.
- Inference paints instance masks (best score first, overlaps go to the higher score) into an
  int32 label image; ``return_roi_features=True`` also returns each object's RoI box-head
  feature vector (for the β-VAE's optional second branch).
- ``train_maskrcnn`` uses the shared training engine (seeds, atomic checkpoints, resume,
  progress, cancel; GPU when present). Masks come from a Labels array, or are derived inside
  VOC boxes from the classical foreground (an inscribed ellipse when that fails).

torch/torchvision are imported inside functions only.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError, StexpError
from ..progress import CancelFlag, ProgressFn, check_cancel, report
from .base import Backend, SegmentationResult, as_rgb_or_grey, objects_table, register_backend

BACKBONES = ("resnet50", "resnet34", "resnet18", "tiny")

DEFAULTS: dict[str, Any] = {
    "weights": None,          # None | 'imagenet' | 'coco' | path to a checkpoint / .pth
    "backbone": "resnet50",
    "classes": ("WBC",),      # object class names (label ids 1..K; 0 is background)
    "score_threshold": 0.5,
    "mask_threshold": 0.5,
    "min_size": 800,          # torchvision resizes the shorter side to this...
    "max_size": 1333,         # ...keeping the longer side at most this
    "trainable_layers": 3,
    "detections_per_image": 100,
    "return_roi_features": False,
    "halo": 128,              # tile overlap (px) for tiled inference
    "model": None,            # an already built model (skips building/loading)
}

_MODEL_CACHE: OrderedDict = OrderedDict()


# --------------------------------------------------------------------------- model building


def _tiny_backbone(out_channels: int = 64):
    import torch.nn as nn

    class TinyBackbone(nn.Sequential):
        pass

    layers: list = []
    c_in = 3
    for c in (16, 32, 48, out_channels):
        layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.BatchNorm2d(c),
                   nn.ReLU(inplace=True)]
        c_in = c
    net = TinyBackbone(*layers)
    net.out_channels = out_channels
    return net


def build_maskrcnn(backbone: str = "resnet50", num_classes: int = 2,
                   weights: str | os.PathLike | None = None, *, min_size: int = 800,
                   max_size: int = 1333, trainable_layers: int = 3,
                   detections_per_image: int = 100):
    """A torchvision ``MaskRCNN`` (``num_classes`` includes background). See module doc."""
    import torchvision
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

    if backbone not in BACKBONES:
        raise InputError(None, f"unknown Mask R-CNN backbone '{backbone}' "
                               f"(choose from {', '.join(BACKBONES)})")
    if weights is not None and str(weights) not in ("imagenet", "coco"):
        return load_maskrcnn(weights, num_classes=num_classes, backbone=backbone,
                             min_size=min_size, max_size=max_size,
                             detections_per_image=detections_per_image)
    kw = {"min_size": min_size, "max_size": max_size,
          "box_detections_per_img": detections_per_image}
    if backbone == "tiny":
        if weights is not None:
            raise InputError(None, "the 'tiny' test backbone has no pretrained weights")
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.faster_rcnn import TwoMLPHead
        from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
        from torchvision.ops import MultiScaleRoIAlign

        c = 64  # small heads and few proposals: a forward/backward pass takes well under 1 s
        return MaskRCNN(
            _tiny_backbone(c), num_classes=None,
            rpn_anchor_generator=AnchorGenerator(((16, 32, 64, 128),), ((0.5, 1.0, 2.0),)),
            rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100,
            rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
            rpn_batch_size_per_image=64, box_batch_size_per_image=64,
            box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
            box_head=TwoMLPHead(c * 7 * 7, 128),
            box_predictor=FastRCNNPredictor(128, num_classes),
            mask_roi_pool=MultiScaleRoIAlign(["0"], 14, 2),
            mask_head=MaskRCNNHeads(c, (c, c), 1),
            mask_predictor=MaskRCNNPredictor(c, c, num_classes), **kw)
    if weights == "coco":
        if backbone != "resnet50":
            raise InputError(None, "COCO weights exist for the resnet50 backbone only")
        W = torchvision.models.detection.MaskRCNN_ResNet50_FPN_Weights.COCO_V1
        try:
            model = torchvision.models.detection.maskrcnn_resnet50_fpn(
                weights=W, trainable_backbone_layers=trainable_layers, **kw)
        except Exception as exc:
            raise _download_error("COCO Mask R-CNN", W.url, exc) from exc
        if num_classes != 91:
            _replace_heads(model, num_classes)
        return model
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    bw = None
    if weights == "imagenet":
        bw = {"resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
              "resnet34": torchvision.models.ResNet34_Weights.IMAGENET1K_V1,
              "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1}[backbone]
    try:
        bb = resnet_fpn_backbone(backbone_name=backbone, weights=bw,
                                 trainable_layers=trainable_layers if bw is not None else 5)
    except Exception as exc:
        if bw is None:
            raise
        raise _download_error(f"ImageNet {backbone}", bw.url, exc) from exc
    return MaskRCNN(bb, num_classes=num_classes, **kw)


def _download_error(what: str, url: str, exc: Exception) -> StexpError:
    from torch.hub import get_dir

    return StexpError(f"cannot load {what} weights ({type(exc).__name__}: {exc}). Without a "
                      f"network, download {url} elsewhere and put it in "
                      f"{Path(get_dir()) / 'checkpoints'}, or pass weights=<path to the file>")


def load_maskrcnn(path: str | os.PathLike, *, num_classes: int | None = None,
                  backbone: str = "resnet50", device: Any = "cpu", **build_kw: Any):
    """Load a Mask R-CNN from a local file: our checkpoint (``{'config', 'model'}``) or a
    plain torchvision state dict (e.g. ``maskrcnn_resnet50_fpn_coco-*.pth``)."""
    from ..training.engine import load_checkpoint

    p = Path(path)
    if not p.exists():
        raise InputError(p, "Mask R-CNN weights file not found")
    state = load_checkpoint(p, device)
    if isinstance(state, dict) and "model" in state and "config" in state:
        cfg = dict(state["config"])
        model = build_maskrcnn(cfg.get("backbone", backbone),
                               num_classes=int(cfg.get("num_classes", num_classes or 2)),
                               weights=None, min_size=int(cfg.get("min_size", 800)),
                               max_size=int(cfg.get("max_size", 1333)),
                               detections_per_image=int(cfg.get("detections_per_image", 100)))
        sd = state["model"]
        model.config = cfg  # type: ignore[attr-defined]
    else:
        sd = state.get("model", state) if isinstance(state, dict) else state
        if not isinstance(sd, dict):
            raise InputError(p, "not a Mask R-CNN state dict or napari-stexp checkpoint")
        n_file = int(sd["roi_heads.box_predictor.cls_score.weight"].shape[0]) \
            if "roi_heads.box_predictor.cls_score.weight" in sd else (num_classes or 2)
        model = build_maskrcnn(backbone, num_classes=n_file, weights=None, **build_kw)
    try:
        model.load_state_dict(sd)
    except RuntimeError as exc:
        raise InputError(p, f"weights do not fit the {backbone} Mask R-CNN ({exc})") from exc
    if num_classes is not None and _n_classes(model) != num_classes and \
            not hasattr(model, "config"):
        _replace_heads(model, num_classes)
    return model


def _replace_heads(model, num_classes: int) -> None:
    """New box/mask predictors for ``num_classes`` (fine-tuning pretrained weights)."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

    in_feat = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(in_feat, num_classes)
    mp = model.roi_heads.mask_predictor
    model.roi_heads.mask_predictor = MaskRCNNPredictor(mp.conv5_mask.in_channels,
                                                       mp.conv5_mask.out_channels, num_classes)


def _n_classes(model) -> int:
    return int(model.roi_heads.box_predictor.cls_score.out_features)


def _cached_model(p: dict):
    """Build/load once per (backbone, weights, classes, sizes) and keep the last two."""
    w = p.get("weights")
    wkey = str(w)
    if w is not None and str(w) not in ("imagenet", "coco") and Path(str(w)).exists():
        st = Path(str(w)).stat()
        wkey = f"{Path(str(w)).resolve()}|{st.st_mtime_ns}|{st.st_size}"
    classes = tuple(p.get("classes") or ("WBC",))
    key = (p["backbone"], wkey, len(classes) + 1, int(p["min_size"]), int(p["max_size"]),
           int(p["detections_per_image"]))
    if key in _MODEL_CACHE:
        _MODEL_CACHE.move_to_end(key)
        return _MODEL_CACHE[key]
    model = build_maskrcnn(p["backbone"], num_classes=len(classes) + 1, weights=w,
                           min_size=int(p["min_size"]), max_size=int(p["max_size"]),
                           trainable_layers=int(p["trainable_layers"]),
                           detections_per_image=int(p["detections_per_image"]))
    _MODEL_CACHE[key] = model
    while len(_MODEL_CACHE) > 2:
        _MODEL_CACHE.popitem(last=False)
    return model


# --------------------------------------------------------------------------- inference


def prepare_maskrcnn(image: Any, params: dict) -> dict:
    """Build or load the model once (tiles reuse it) and pick the device."""
    from ..training.device import get_device

    p = {**DEFAULTS, **params}
    model = p.get("model") or _cached_model(p)
    cfg = getattr(model, "config", None)
    if cfg and cfg.get("classes"):
        p["classes"] = tuple(cfg["classes"])
    if cfg and cfg.get("backbone"):
        p["backbone"] = cfg["backbone"]
    p["model"] = model
    p["torch_device"] = get_device(p.get("device", "auto"))
    return p


def maskrcnn_halo(params: dict) -> int:
    return int(params.get("halo") or DEFAULTS["halo"])


def _to_tensor(img: np.ndarray):
    import torch

    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()


def _forward_with_features(model, images: list):
    """Eval-mode forward that also returns each detection's RoI box-head features."""
    import torch

    original_sizes = [tuple(im.shape[-2:]) for im in images]
    batch, _ = model.transform(images)
    feats = model.backbone(batch.tensors)
    if isinstance(feats, torch.Tensor):
        feats = OrderedDict([("0", feats)])
    proposals, _ = model.rpn(batch, feats)
    detections, _ = model.roi_heads(feats, proposals, batch.image_sizes)
    boxes = [d["boxes"] for d in detections]
    roi = model.roi_heads.box_head(model.roi_heads.box_roi_pool(feats, boxes, batch.image_sizes))
    detections = model.transform.postprocess(detections, batch.image_sizes, original_sizes)
    out, k = [], 0
    for d in detections:
        n = len(d["boxes"])
        d["roi_features"] = roi[k:k + n]
        k += n
        out.append(d)
    return out


def detections_to_labels(det: dict, shape: tuple[int, int], *, score_threshold: float = 0.5,
                         mask_threshold: float = 0.5, classes: tuple[str, ...] = ("WBC",),
                         min_free: float = 0.5):
    """Paint detections into an int32 label image, best score first.

    A detection whose mask is mostly (> 1 - ``min_free``) covered by better ones is dropped as
    a duplicate. Returns ``(labels, scores, class names, kept indices)``.
    """
    scores = det["scores"].detach().cpu().numpy()
    masks = det["masks"].detach().cpu().numpy()[:, 0] if len(scores) else np.zeros((0, *shape))
    lab_ids = det["labels"].detach().cpu().numpy()
    labels = np.zeros(shape, np.int32)
    sc: dict[int, float] = {}
    cl: dict[int, str] = {}
    kept: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if scores[i] < score_threshold:
            break
        m = masks[i] > mask_threshold
        n = int(m.sum())
        if n == 0:
            continue
        free = m & (labels == 0)
        if free.sum() < min_free * n:
            continue
        new = len(kept) + 1
        labels[free] = new
        sc[new] = float(scores[i])
        k = int(lab_ids[i])
        cl[new] = classes[k - 1] if 1 <= k <= len(classes) else str(k)
        kept.append(int(i))
    return labels, sc, cl, kept


def segment_maskrcnn(image: Any, params: dict | None = None, progress: ProgressFn | None = None,
                     cancel: CancelFlag | None = None) -> SegmentationResult:
    """Detect and segment objects with Mask R-CNN on one in-memory image."""
    import torch

    p = {**DEFAULTS, **(params or {})}
    if p.get("model") is None or p.get("torch_device") is None:
        p = prepare_maskrcnn(image, p)
    img = as_rgb_or_grey(image)
    model, device = p["model"], p["torch_device"]
    model.to(device).eval()
    report(progress, 0, 1, "Mask R-CNN")
    check_cancel(cancel, "segmentation")
    x = _to_tensor(img).to(device)
    with torch.inference_mode():
        if p["return_roi_features"]:
            det = _forward_with_features(model, [x])[0]
        else:
            det = model([x])[0]
    classes = tuple(p.get("classes") or ("WBC",))
    labels, sc, cl, kept = detections_to_labels(
        det, img.shape[:2], score_threshold=float(p["score_threshold"]),
        mask_threshold=float(p["mask_threshold"]), classes=classes)
    # painting can leave a kept label with no pixels only if fully overwritten: not possible
    # (we paint only free pixels and require some), so labels are 1..len(kept).
    table = objects_table(labels, sc, cl)
    roi = None
    if p["return_roi_features"]:
        roi = det["roi_features"].detach().cpu().numpy().astype(np.float32)[kept] if kept \
            else np.zeros((0, det["roi_features"].shape[-1]), np.float32)
    report(progress, 1, 1, "done")
    return SegmentationResult(labels=labels, table=table, roi_features=roi,
                              metadata={"method": "maskrcnn", "backbone": p["backbone"],
                                        "weights": str(p["weights"]), "classes": list(classes),
                                        "device": str(device)})


# --------------------------------------------------------------------------- training data


def masks_from_boxes(image: np.ndarray, boxes: pd.DataFrame, **classical_params: Any
                     ) -> np.ndarray:
    """Instance masks (n, Y, X) bool for VOC boxes: inside each box, the classical cell
    segment overlapping it most (clipped to the box); an inscribed ellipse where the classical
    foreground does not fit the box (IoU of its bbox with the box < 0.3)."""
    from .boxes import box_iou
    from .classical import segment_classical

    img = as_rgb_or_grey(image)
    H, W = img.shape[:2]
    res = segment_classical(img, classical_params) if len(boxes) else None
    out = np.zeros((len(boxes), H, W), bool)
    yy, xx = np.mgrid[0:H, 0:W]
    for k, r in enumerate(boxes.itertuples()):
        x0, y0 = int(np.floor(max(r.xmin, 0))), int(np.floor(max(r.ymin, 0)))
        x1, y1 = int(np.ceil(min(r.xmax, W))), int(np.ceil(min(r.ymax, H)))
        if x1 <= x0 or y1 <= y0:
            continue
        best = None
        if res is not None:
            sub = res.labels[y0:y1, x0:x1]
            ids, counts = np.unique(sub[sub > 0], return_counts=True)
            if ids.size:
                lab = int(ids[np.argmax(counts)])
                row = res.table[res.table["label"] == lab].iloc[0]
                iou = box_iou([[r.xmin, r.ymin, r.xmax, r.ymax]],
                              [[row.xmin, row.ymin, row.xmax, row.ymax]])[0, 0]
                if iou >= 0.3:
                    best = res.labels == lab
        if best is None:
            cy, cx = (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2
            ry, rx = max((y1 - y0) / 2, 1), max((x1 - x0) / 2, 1)
            best = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        m = np.zeros((H, W), bool)
        m[y0:y1, x0:x1] = best[y0:y1, x0:x1]
        out[k] = m
    return out


def targets_from_boxes(image: np.ndarray, boxes: pd.DataFrame, classes: tuple[str, ...]
                       ) -> dict:
    """A torchvision target dict from a VOC box table (rows of other classes are ignored)."""
    b = boxes[boxes["name"].isin(classes)].reset_index(drop=True) if "name" in boxes else boxes
    masks = masks_from_boxes(image, b)
    keep = masks.reshape(len(b), -1).any(axis=1) if len(b) else np.zeros(0, bool)
    b, masks = b[keep].reset_index(drop=True), masks[keep]
    names = b["name"] if "name" in b else pd.Series([classes[0]] * len(b))
    return {"boxes": b[["xmin", "ymin", "xmax", "ymax"]].to_numpy(np.float32),
            "labels": np.array([classes.index(n) + 1 for n in names], np.int64),
            "masks": masks}


def targets_from_labels(label_image: np.ndarray, classes: dict[int, int] | None = None) -> dict:
    """A torchvision target dict from an instance label image (class 1 unless ``classes``
    maps label -> class id)."""
    lab = np.asarray(label_image)
    if lab.ndim != 2:
        raise InputError(None, f"label image must be 2-D, got shape {lab.shape}")
    ids = np.unique(lab)
    ids = ids[ids != 0]
    boxes, masks, cls = [], [], []
    for i in ids:
        m = lab == i
        ys, xs = np.nonzero(m)
        if xs.max() == xs.min() or ys.max() == ys.min():
            continue
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        masks.append(m)
        cls.append((classes or {}).get(int(i), 1))
    return {"boxes": np.array(boxes, np.float32).reshape(-1, 4),
            "labels": np.array(cls, np.int64),
            "masks": np.array(masks, bool).reshape(-1, *lab.shape)}


def _as_torch_target(t: dict):
    import torch

    return {"boxes": torch.as_tensor(np.asarray(t["boxes"], np.float32)).reshape(-1, 4),
            "labels": torch.as_tensor(np.asarray(t["labels"], np.int64)),
            "masks": torch.as_tensor(np.asarray(t["masks"], np.uint8))}


def _flip(img, target, axis: int):
    """Flip a (3, H, W) tensor and its target along ``axis`` (2 = horizontal, 1 = vertical)."""
    img = img.flip(axis)
    t = dict(target)
    b = t["boxes"].clone()
    if axis == 2:
        W = img.shape[2]
        b[:, [0, 2]] = W - t["boxes"][:, [2, 0]]
    else:
        H = img.shape[1]
        b[:, [1, 3]] = H - t["boxes"][:, [3, 1]]
    t["boxes"] = b
    t["masks"] = t["masks"].flip(axis)
    return img, t


def train_maskrcnn(images: list, targets: list[dict] | None = None, *,
                   boxes: list[pd.DataFrame] | None = None,
                   label_images: list[np.ndarray] | None = None,
                   classes: tuple[str, ...] = ("WBC",), backbone: str = "resnet50",
                   weights: str | os.PathLike | None = None, epochs: int = 10,
                   batch_size: int = 2, lr: float = 1e-4, weight_decay: float = 1e-4,
                   seed: int = 0, device: str = "auto", augment: bool = True,
                   min_size: int = 800, max_size: int = 1333, trainable_layers: int = 3,
                   out_dir: str | os.PathLike | None = None, resume: bool = True,
                   model=None, progress: ProgressFn | None = None,
                   cancel: CancelFlag | None = None):
    """Train (or fine-tune) a Mask R-CNN; returns ``(model, history)``.

    Give exactly one of ``targets`` (torchvision dicts: ``boxes`` xyxy, ``labels``, ``masks``),
    ``boxes`` (VOC tables per image; masks derived inside the boxes) or ``label_images``
    (instance label arrays, e.g. a napari Labels layer). With ``out_dir``, checkpoints go to
    ``out_dir/last.pt`` (resumable) and the final model to ``out_dir/maskrcnn.pt``, loadable
    with ``segment(..., method='maskrcnn', weights=out_dir/'maskrcnn.pt')``.
    """
    import torch

    from ..training.engine import TrainConfig, fit, save_checkpoint

    given = [x is not None for x in (targets, boxes, label_images)]
    if sum(given) != 1:
        raise InputError(None, "give exactly one of targets=, boxes= or label_images=")
    if not images:
        raise InputError(None, "no training images")
    imgs = [as_rgb_or_grey(_load_image(im), _name(im)) for im in images]
    classes = tuple(classes)
    if boxes is not None:
        if len(boxes) != len(imgs):
            raise InputError(None, f"{len(imgs)} images but {len(boxes)} box tables")
        targets = [targets_from_boxes(im, b, classes) for im, b in zip(imgs, boxes, strict=True)]
    elif label_images is not None:
        if len(label_images) != len(imgs):
            raise InputError(None, f"{len(imgs)} images but {len(label_images)} label images")
        targets = []
        for im, lab in zip(imgs, label_images, strict=True):
            if np.asarray(lab).shape != im.shape[:2]:
                raise InputError(None, f"label image shape {np.asarray(lab).shape} differs from "
                                       f"its image's {im.shape[:2]}")
            targets.append(targets_from_labels(lab))
    assert targets is not None
    data = [(_to_tensor(im), _as_torch_target(t)) for im, t in zip(imgs, targets, strict=True)
            if len(t["boxes"])]
    if not data:
        raise InputError(None, "no objects to learn from in the training targets")
    cfg = {"backbone": backbone, "num_classes": len(classes) + 1, "classes": list(classes),
           "min_size": int(min_size), "max_size": int(max_size), "weights_init": str(weights),
           "epochs": int(epochs), "lr": lr, "seed": seed, "batch_size": batch_size}
    if model is None:
        model = build_maskrcnn(backbone, num_classes=len(classes) + 1, weights=weights,
                               min_size=min_size, max_size=max_size,
                               trainable_layers=trainable_layers)
    n_batches = int(np.ceil(len(data) / batch_size))

    def batches(epoch: int):
        rng = np.random.default_rng(seed * 1000 + epoch)
        order = rng.permutation(len(data))
        for k in range(0, len(order), batch_size):
            ims, tgs = [], []
            for i in order[k:k + batch_size]:
                im, t = data[int(i)]
                if augment:
                    if rng.random() < 0.5:
                        im, t = _flip(im, t, 2)
                    if rng.random() < 0.5:
                        im, t = _flip(im, t, 1)
                ims.append(im)
                tgs.append(t)
            yield ims, tgs

    def step(m, batch, dev):
        ims, tgs = batch
        ims = [im.to(dev) for im in ims]
        tgs = [{k: v.to(dev) for k, v in t.items()} for t in tgs]
        losses = m(ims, tgs)
        return sum(losses.values())

    conf = TrainConfig(epochs=epochs, lr=lr, weight_decay=weight_decay, seed=seed,
                       device=device, grad_clip=10.0)
    history = fit(model, batches, step, conf, checkpoint_dir=out_dir, resume=resume,
                  extra_state={"config": cfg}, progress=progress, cancel=cancel,
                  batches_per_epoch=n_batches)
    model.config = cfg  # type: ignore[attr-defined]
    if out_dir is not None:
        save_checkpoint({"config": cfg, "model": model.state_dict(),
                         "history": history.epochs}, Path(out_dir) / "maskrcnn.pt")
    model.eval()
    _ = torch  # keep the import local and explicit
    return model, history


def _load_image(im: Any) -> np.ndarray:
    if isinstance(im, str | os.PathLike):
        from ..io.smears import read_smear

        pyr = read_smear(im)
        return pyr.read_region(0, 0, pyr.height, pyr.width)
    return np.asarray(im)


def _name(im: Any) -> str | None:
    return str(im) if isinstance(im, str | os.PathLike) else "image"


register_backend(Backend(
    name="maskrcnn",
    run=segment_maskrcnn,
    prepare=prepare_maskrcnn,
    halo=maskrcnn_halo,
    description="torchvision Mask R-CNN (trainable; GPU when present)",
    defaults=DEFAULTS,
    needs_sample=False,
))
