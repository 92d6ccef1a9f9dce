"""One session state per napari viewer, shared by every dock widget (no Qt here).

Widgets find each other's results through this object (psygnal ``EventedModel``), never through
private napari attributes. ``layer.features`` stays the data bus for per-item values; the session
holds what is not a layer: loaded AnnData objects, fitted models, registered embeddings and the
name of the current slide.
"""

from __future__ import annotations

import weakref
from typing import Any

from psygnal import EventedModel
from pydantic import ConfigDict, Field


class EmbeddingRef(EventedModel):
    """Where an embedding lives: a layer's features columns or an AnnData ``obsm`` key.

    ``layer`` names the napari layer whose rows the embedding describes (row i of the embedding
    = row i of ``layer.features``). ``data`` holds the (n, d) matrix itself.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    layer: str | None = None
    data: Any = None
    source: str = ""  # e.g. "mclstexp", "bvae", "classifier:image", "obsm:X_pca"


class Session(EventedModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    current_slide: str | None = None
    adatas: dict[str, Any] = Field(default_factory=dict)  # section/slide name -> AnnData
    images: dict[str, Any] = Field(default_factory=dict)  # section/slide name -> ImagePyramid
    embeddings: dict[str, EmbeddingRef] = Field(default_factory=dict)
    models: dict[str, Any] = Field(default_factory=dict)  # kind -> fitted model / model dir
    selection_column: str = "selection"

    def add_adata(self, name: str, adata: Any) -> None:
        self.adatas = {**self.adatas, name: adata}

    def add_embedding(self, ref: EmbeddingRef) -> None:
        self.embeddings = {**self.embeddings, ref.name: ref}


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_session(viewer: Any) -> Session:
    """The session of ``viewer`` (created on first use; dies with the viewer).

    napari hands plugin widgets a proxy of the viewer; we key on the real viewer so every widget
    (proxied or not) shares one session and the session lives as long as the viewer.
    """
    viewer = getattr(viewer, "__wrapped__", viewer)
    try:
        return _SESSIONS[viewer]
    except KeyError:
        sess = Session()
        _SESSIONS[viewer] = sess
        return sess
