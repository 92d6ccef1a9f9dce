"""Save asks before overwriting (issue 17 item 11): a Yes/No question, No keeps the old files."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui


class _Model:
    def __init__(self):
        self.saved = []

    def save(self, path):
        self.saved.append(str(path))


def _answer(monkeypatch, yes: bool):
    from qtpy.QtWidgets import QMessageBox

    asked = []

    def question(parent, title, text, *args, **kw):
        asked.append(text)
        return QMessageBox.StandardButton.Yes if yes else QMessageBox.StandardButton.No

    monkeypatch.setattr(QMessageBox, "question", staticmethod(question))
    return asked


@pytest.mark.parametrize("widget", ["classify", "expression"])
def test_save_asks_before_overwriting_a_model_folder(make_napari_viewer, monkeypatch, tmp_path,
                                                     widget):
    if widget == "classify":
        from napari_stexp.widgets.classify import ClassifyWidget as W
    else:
        from napari_stexp.widgets.expression import ExpressionWidget as W

    w = W(make_napari_viewer())
    w.model = _Model()
    fresh = tmp_path / "new"
    asked = _answer(monkeypatch, yes=False)
    assert w.save(str(fresh)) == str(fresh)  # nothing there: no question
    assert asked == [] and w.model.saved == [str(fresh)]
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text("{}")
    assert w.save(str(old)) is None  # asked, answered No: not saved
    assert len(asked) == 1 and str(old) in asked[0]
    assert w.model.saved == [str(fresh)]
    asked = _answer(monkeypatch, yes=True)
    assert w.save(str(old)) == str(old)
    assert len(asked) == 1 and w.model.saved[-1] == str(old)


def test_exists_with_content(tmp_path):
    from napari_stexp.widgets._save import exists_with_content

    assert not exists_with_content(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert not exists_with_content(tmp_path / "empty")
    (tmp_path / "f.h5ad").write_text("x")
    assert exists_with_content(tmp_path / "f.h5ad") and exists_with_content(tmp_path)
