"""One model-folder contract for every trained model (mclSTExp, classifier, β-VAE, gene VAE).

A model folder is a directory holding ``config.json`` and the files it lists::

    config.json   {"format": "napari-stexp/<kind>", "format_version": <int>,
                   "napari_stexp_version": ..., "config": {...model config...},
                   "files": {"model.pt": {"sha256": ...}, "genes.txt": {...}, ...},
                   "panel_sha256": {"genes": ..., "classes": ...}, "provenance": {...}, ...}
    *.pt          tensors only (``torch.save`` of a dict of tensors, or of dicts of tensors),
                  always read back with ``torch.load(weights_only=True)``: a file holding any
                  other Python object is refused, so a crafted pickle never runs
    other files   text (``genes.txt``), ``.npz`` arrays (read with ``allow_pickle=False``) or a
                  nested model folder (the classifier's gene encoder); each digested

:func:`write_model_folder` writes the whole directory atomically (``io._atomic.atomic_path``:
temporary sibling, locked target, rename). :func:`read_model_folder` validates the tag, the
integer version (refusing a newer one), the JSON types and the digests, each failure one
``InputError("<file>: <problem>")``. Folders written before this contract (no digests, the
``napari-stexp.bvae`` tag, a gene VAE without ``config.json``) still open.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._provenance import dumps, sha256_file
from .._provenance import version as package_version
from ..errors import InputError

PREFIX = "napari-stexp/"
KINDS = ("mclstexp", "batch-agnostic-classifier", "bvae", "gene-vae")
LEGACY_TAGS = {"napari-stexp.bvae": "bvae"}  # the β-VAE's tag before this contract
CONFIG = "config.json"
LEGACY_GENE_VAE = "gene_vae.pt"  # a gene VAE written before this contract: no config.json

#: the newest format version this code reads, per kind (each model module writes its own)
FORMAT_VERSIONS = {"mclstexp": 2, "batch-agnostic-classifier": 2, "bvae": 2, "gene-vae": 2}
_KIND_NAMES = {"mclstexp": "mclSTExp model", "batch-agnostic-classifier":
               "batch-agnostic classifier", "bvae": "β-VAE model", "gene-vae": "gene VAE"}


def tag(kind: str) -> str:
    """``napari-stexp/<kind>`` (the ``format`` entry of ``config.json``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r} (known: {', '.join(KINDS)})")
    return PREFIX + kind


def kind_of_tag(fmt: Any) -> str | None:
    if fmt in LEGACY_TAGS:
        return LEGACY_TAGS[fmt]
    if isinstance(fmt, str) and fmt.startswith(PREFIX) and fmt[len(PREFIX):] in KINDS:
        return fmt[len(PREFIX):]
    return None


# ----------------------------------------------------------------------------- writing


def _plain_tensors(state: Mapping[str, Any], where: str) -> dict:
    """``state`` with tensors detached on the CPU; one level of nested dicts allowed."""
    import torch

    out = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            out[str(k)] = v.detach().cpu()
        elif isinstance(v, Mapping) and where.count("/") == 0:
            out[str(k)] = _plain_tensors(v, f"{where}/{k}")
        else:
            raise TypeError(f"{where}: {k!r} is a {type(v).__name__}, not a tensor (model "
                            "folders hold tensors only)")
    return out


def panel_digest(names: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(map(str, names)).encode()).hexdigest()


def write_model_folder(out: str | os.PathLike, *, format: str, version: int, config: dict,
                       state_dicts: Mapping[str, Mapping[str, Any]],
                       meta: Mapping[str, Any] | None = None,
                       extra_files: Mapping[str, str | bytes] | None = None,
                       arrays: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                       folders: Mapping[str, Callable[[Path], Any]] | None = None,
                       panel: Mapping[str, Sequence[str]] | None = None,
                       provenance: Mapping[str, Any] | None = None,
                       atomic: bool = True) -> Path:
    """Write a model folder at ``out`` (replacing an existing one atomically).

    ``format``: a kind (``"mclstexp"``) or its tag; ``config``: the model's configuration
    dict; ``state_dicts``: file name → dict of tensors (``torch.save``-d, loaded with
    ``weights_only=True``); ``meta``: further top-level ``config.json`` entries;
    ``extra_files``: name → text/bytes; ``arrays``: ``.npz`` name → arrays; ``folders``: name →
    ``writer(path)`` of a nested model folder (written with ``atomic=False``); ``panel``: named
    ordered lists (genes, classes) whose digests tie them to the weights. Every file's sha256
    goes into ``config.json``. ``atomic=False`` writes in place (inside an outer atomic write).
    """
    import torch

    fmt = format if format.startswith(PREFIX) else tag(format)
    if kind_of_tag(fmt) is None:
        raise ValueError(f"unknown model format {format!r}")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"format version must be a positive integer, got {version!r}")
    out = check_model_out(out)

    def _write(d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        files: dict[str, dict] = {}
        for name, state in state_dicts.items():
            torch.save(_plain_tensors(state, name), d / name)
        for name, content in (extra_files or {}).items():
            p = d / name
            if isinstance(content, bytes):
                p.write_bytes(content)
            else:
                p.write_text(content, encoding="utf-8")
        for name, arrs in (arrays or {}).items():
            with open(d / name, "wb") as fh:
                np.savez(fh, **arrs)
        for name in [*state_dicts, *(extra_files or {}), *(arrays or {})]:
            files[name] = {"sha256": sha256_file(d / name)}
        for name, writer in (folders or {}).items():
            writer(d / name)
            files[name] = {"sha256": sha256_file(d / name / CONFIG), "folder": True}
        doc = {"format": fmt, "format_version": version, "napari_stexp_version": package_version(),
               "config": config, "files": files}
        if panel:
            doc["panel_sha256"] = {k: panel_digest(v) for k, v in panel.items()}
        clash = sorted(set(meta or {}) & set(doc))
        if clash:
            raise ValueError(f"meta may not set {', '.join(clash)} (written by the contract)")
        doc.update(meta or {})
        if provenance is not None:
            doc["provenance"] = dict(provenance)
        (d / CONFIG).write_text(dumps(doc, indent=2), encoding="utf-8")

    if not atomic:
        _write(out)
        return out
    from ..io._atomic import atomic_path

    with atomic_path(out, directory=True) as tmp:
        _write(tmp)
    return out


def check_model_out(out: str | os.PathLike, *, claim: bool = False) -> Path:
    """Refuse, before any work, a model-folder target that is an existing regular file (it
    would be replaced by the folder) or whose parent is a file. ``claim``: also hold the
    target's lock until the process exits (or :func:`release_model_out`), so a second training
    into the same folder is refused clearly instead of silently replacing this one's result."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder (refusing to replace a file with a "
                              "model folder)")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(parent, "is a file, not a folder")
            break
    if claim:
        from ..io._atomic import claim_target

        claim_target(out)
    return out


def release_model_out(out: str | os.PathLike) -> None:
    """Release the lock :func:`check_model_out` (``claim=True``) took on ``out``."""
    from ..io._atomic import release_target

    release_target(out)


def section_source(adata) -> dict:
    """Provenance of one training section: its reader, image path and spot count."""
    from ..io.spatial import spatial_info

    meta = spatial_info(adata)["metadata"]
    return {"source": meta.get("source"), "image": meta.get("source_image_path"),
            "n_spots": int(adata.n_obs)}


# ----------------------------------------------------------------------------- reading


@dataclass
class ModelFolder:
    """A validated model folder: ``meta`` (``config.json``), ``kind``, ``version`` and the
    paths of its files. ``legacy`` is True for folders written before the contract (no
    digests). Read its parts with :meth:`state`, :meth:`lines`, :meth:`arrays`."""

    path: Path
    meta: dict
    kind: str
    version: int
    legacy: bool = False
    paths: dict[str, Path] = field(default_factory=dict)
    legacy_state: dict | None = None  # a legacy gene VAE: the tensors read with its meta

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def what(self) -> str:
        return _KIND_NAMES[self.kind]

    def file(self, name: str) -> Path:
        """The path of ``name``; InputError naming the folder when it is missing."""
        p = self.path / name
        if not p.exists():
            raise InputError(self.path, f"not a {self.what} folder: {name} is missing")
        self.paths[name] = p
        return p

    def _check_digest(self, name: str) -> bool:
        """False if ``config.json`` records a digest for ``name`` that the file does not have."""
        rec = (self.meta.get("files") or {}).get(name)
        if not isinstance(rec, Mapping) or not rec.get("sha256"):
            if not self.legacy and "files" in self.meta:
                raise InputError(self.config_path, f"lists no digest for {name}")
            return True
        p = self.path / name / CONFIG if rec.get("folder") else self.path / name
        return sha256_file(p) == rec["sha256"]

    def state(self, name: str) -> dict:
        """The tensors of weights file ``name`` (``weights_only=True``; digest checked)."""
        p = self.file(name)
        digest_ok = self._check_digest(name)
        state = load_tensors(p)  # before the digest verdict: a refused/corrupt file says so
        if not digest_ok:
            raise InputError(p, "weights do not match the sha256 recorded in config.json "
                                "(written by another run, or edited)")
        return state

    def lines(self, name: str) -> list[str]:
        """Non-empty lines of text file ``name`` (UTF-8; digest checked)."""
        p = self.file(name)
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(p, f"not a UTF-8 text file ({exc.reason} at byte {exc.start})") \
                from exc
        if "\x00" in text:
            raise InputError(p, "not a text file (holds NUL bytes)")
        if not self._check_digest(name):
            raise InputError(p, "does not match the sha256 recorded in config.json (edited, "
                                "shuffled or from another model)")
        return [g for g in text.splitlines() if g]

    def arrays(self, name: str, keys: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """The arrays of ``.npz`` file ``name`` (no pickles; digest checked)."""
        p = self.file(name)
        if not self._check_digest(name):
            raise InputError(p, "does not match the sha256 recorded in config.json")
        try:
            with np.load(p, allow_pickle=False) as z:
                out = {k: z[k] for k in z.files}
        except Exception as exc:
            raise InputError(p, f"cannot read ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        missing = [k for k in keys if k not in out]
        if missing:
            raise InputError(p, f"missing array(s) {', '.join(missing)}")
        return out

    def folder(self, name: str, expect: str | None = None) -> ModelFolder:
        """A nested model folder (its ``config.json`` digest checked)."""
        p = self.file(name)
        if not self._check_digest(name):
            raise InputError(p / CONFIG, "does not match the sha256 recorded in "
                                         f"{self.config_path}")
        return read_model_folder(p, expect)

    def panel(self, key: str, names: Sequence[str], source: Any = None) -> list[str]:
        """``names`` (genes, classes) checked: strings, no duplicates, and equal (in order) to
        the list whose digest ``config.json`` records."""
        src = source or self.config_path
        names = list(names)
        if not all(isinstance(n, str) and n for n in names):
            raise InputError(src, f"{key}: every entry must be a non-empty string")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise InputError(src, f"{key}: duplicate name(s) {', '.join(dup[:5])}"
                                  f"{' …' if len(dup) > 5 else ''}")
        want = (self.meta.get("panel_sha256") or {}).get(key)
        if want and panel_digest(names) != want:
            raise InputError(src, f"{key} do not match the panel the weights were trained on "
                                  "(shuffled, renamed or from another model)")
        return names

    def config(self, cls: type, key: str = "config") -> Any:
        """``meta[key]`` as the dataclass ``cls`` (types and sizes checked)."""
        return config_from_dict(cls, self.meta.get(key), self.config_path, key)


def str_list(v: Any, source: Any, key: str) -> list[str]:
    """``v`` if it is a JSON list of strings, else an InputError naming ``source`` and ``key``."""
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise InputError(source, f"{key!r} must be a list of strings")
    return list(v)


def load_tensors(path: Path) -> dict:
    """``torch.load(weights_only=True)`` of a weights file with one-line errors: a file holding
    other Python objects is refused (it could run code), a damaged one is "truncated or
    corrupt". Returns a dict whose leaves are tensors (one level of nesting; a legacy gene VAE
    file's ``meta`` entry holds JSON-like values)."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "Unsupported global" in msg or "GLOBAL" in msg:
            raise InputError(path, "refused: holds Python objects other than tensors (loading "
                                   "it could run code); model folders hold tensors only") \
                from exc
        raise InputError(path, "truncated or corrupt weights file (not a torch tensor "
                               "archive)") from exc
    except Exception as exc:
        raise InputError(path, f"truncated or corrupt weights file ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if not isinstance(obj, dict):
        raise InputError(path, f"holds a {type(obj).__name__}, not a dict of tensors")
    for k, v in obj.items():
        if isinstance(v, torch.Tensor) or k == "meta":
            continue
        if isinstance(v, dict) and all(isinstance(t, torch.Tensor) for t in v.values()):
            continue
        raise InputError(path, f"entry {k!r} is not a tensor")
    return obj


def load_into(module: Any, state: Mapping[str, Any], source: Path) -> None:
    """``module.load_state_dict(state, strict=True)`` with a one-line InputError."""
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise InputError(source, "weights do not match config.json "
                                 f"({str(exc).splitlines()[0] if str(exc) else exc!r})") from exc


def _read_json(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from exc
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(path, f"not valid JSON ({exc})") from exc


def folder_kind(path: str | os.PathLike) -> str:
    """The kind of the model folder at ``path`` (from its tag) or an InputError."""
    return read_model_folder(path).kind


def read_model_folder(path: str | os.PathLike, expect_format: str | None = None
                      ) -> ModelFolder:
    """Open and validate the model folder at ``path``.

    ``expect_format``: a kind or tag the folder must have (else an InputError that names both).
    Checks: the folder and ``config.json`` exist; ``config.json`` is a JSON object with a known
    tag, an integer ``format_version`` not newer than this code reads, and a ``config`` object.
    File digests are checked when the files are read (:meth:`ModelFolder.state` ...).
    """
    d = Path(path)
    want = None if expect_format is None else (
        kind_of_tag(expect_format) or expect_format)
    what = _KIND_NAMES.get(want, "model") if want else "model"
    if not d.exists():
        raise InputError(d, "model folder not found")
    if not d.is_dir():
        raise InputError(d, f"not a {what} folder (a file, not a folder)")
    cfg = d / CONFIG
    if not cfg.is_file():
        if (d / LEGACY_GENE_VAE).is_file() and want in (None, "gene-vae"):
            return _legacy_gene_vae(d)
        if want == "gene-vae":
            raise InputError(d, f"no {LEGACY_GENE_VAE} or {CONFIG} in this folder (not a "
                                "gene-encoder model)")
        raise InputError(d, f"not a {what} folder: {CONFIG} is missing")
    meta = _read_json(cfg)
    if not isinstance(meta, dict):
        raise InputError(cfg, f"must be a JSON object, not a {_json_type(meta)}")
    kind = kind_of_tag(meta.get("format"))
    if want is not None and kind != want:
        raise InputError(cfg, f"not a {what} (format {meta.get('format')!r})")
    ver = meta.get("format_version")
    if kind is None:
        raise InputError(cfg, f"not a napari-stexp model folder (format "
                              f"{meta.get('format')!r})")
    if not isinstance(ver, int) or isinstance(ver, bool):
        raise InputError(cfg, f"format_version must be an integer, got {_json_type(ver)} "
                              f"{ver!r}")
    supported = FORMAT_VERSIONS[kind]
    if ver < 1:
        raise InputError(cfg, f"format_version must be >= 1, got {ver}")
    if ver > supported:
        raise InputError(d, f"model format {ver} is newer than this napari-stexp understands "
                            f"({supported}); upgrade")
    if not isinstance(meta.get("config"), dict):
        raise InputError(cfg, f"'config' must be a JSON object, not a "
                              f"{_json_type(meta.get('config'))}")
    for key in ("files", "panel_sha256"):
        if key in meta and not isinstance(meta[key], dict):
            raise InputError(cfg, f"{key!r} must be a JSON object")
    return ModelFolder(path=d, meta=meta, kind=kind, version=ver,
                       legacy="files" not in meta)


def _legacy_gene_vae(d: Path) -> ModelFolder:
    """A gene VAE written before the contract: ``gene_vae.pt`` = {state_dict, meta}."""
    state = load_tensors(d / LEGACY_GENE_VAE)
    meta = state.get("meta")
    if not isinstance(meta, dict) or not isinstance(state.get("state_dict"), dict):
        raise InputError(d / LEGACY_GENE_VAE, "not a gene encoder (no state_dict/meta)")
    meta = {**meta, "format": tag("gene-vae"), "format_version": 1}
    return ModelFolder(path=d, meta=meta, kind="gene-vae", version=1, legacy=True,
                       legacy_state=state["state_dict"])


def _json_type(v: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(v), type(v).__name__)


# ----------------------------------------------------------------------------- config checks


def config_from_dict(cls: type, d: Any, source: Any, key: str = "config") -> Any:
    """Build dataclass ``cls`` from the JSON object ``d``, checking each known entry's type
    against the field's annotation (ints are ints, not strings; no negative sizes) so a
    tampered ``config.json`` fails with one line instead of deep inside the network code.
    Unknown entries are ignored (a newer minor field); missing ones take their defaults."""
    if not isinstance(d, dict):
        raise InputError(source, f"{key!r} must be a JSON object, not a {_json_type(d)}")
    hints = typing.get_type_hints(cls)
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        v = d[f.name]
        hint = hints.get(f.name, Any)
        if dataclasses.is_dataclass(hint):
            kw[f.name] = config_from_dict(hint, v, source, f"{key}.{f.name}")
            continue
        if not _matches(v, hint):
            raise InputError(source, f"{key}.{f.name}: expected {_hint_name(hint)}, got "
                                     f"{_json_type(v)} {v!r}")
        if _is_number(v) and v < 0 and _is_size(f.name):
            raise InputError(source, f"{key}.{f.name}: must not be negative, got {v}")
        if isinstance(v, list) and _origin(hint) is tuple:
            v = tuple(v)
        kw[f.name] = v
    try:
        return cls(**kw)
    except (TypeError, ValueError) as exc:
        raise InputError(source, f"{key}: {exc}") from exc


_SIZE_WORDS = ("size", "dim", "epochs", "channels", "heads", "depth", "hidden", "latent",
               "layers", "views", "top_k", "margin", "n_")


def _is_size(name: str) -> bool:
    return any(w in name for w in _SIZE_WORDS)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _origin(hint: Any) -> Any:
    return typing.get_origin(hint)


def _matches(v: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(v, h) for h in typing.get_args(hint))
    if hint is type(None):
        return v is None
    if hint is bool:
        return isinstance(v, bool)
    if hint is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if hint is float:
        return _is_number(v)
    if hint is str:
        return isinstance(v, str)
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(v, list | tuple):
            return False
        args = typing.get_args(hint)
        if not args:
            return True
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            return all(_matches(x, args[0]) for x in v)
        return len(args) == len(v) and all(_matches(x, a) for x, a in zip(v, args, strict=True))
    if origin is dict or hint is dict:
        return isinstance(v, dict)
    return True  # an annotation this checker does not know: let the dataclass decide


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
