"""The trained-model widget base: one form/CLI source (config field metadata), one target
order, one section policy, one image lookup, presets that are not overridden, Cancel reported as
cancelled (issues 13.6, 17.8, 17.9)."""

from __future__ import annotations

import argparse

import pytest

pytestmark = pytest.mark.gui


def _widgets(viewer):
    from napari_stexp.widgets.classify import ClassifyWidget
    from napari_stexp.widgets.expression import ExpressionWidget

    return ExpressionWidget(viewer), ClassifyWidget(viewer)


def _cli_help(*argv) -> str:
    from napari_stexp.cli import build_parser

    p = build_parser()
    sub = p
    for a in argv:
        sub = next(act for act in sub._actions
                   if isinstance(act, argparse._SubParsersAction)).choices[a]
    return sub.format_help()


def test_form_and_cli_share_default_and_help(make_napari_viewer):
    import re

    from napari_stexp.models._options import option_spec
    from napari_stexp.widgets._model_widget import get_value

    ew, cw = _widgets(make_napari_viewer())
    for w, cmd in ((ew, "expression"), (cw, "classify")):
        text = " ".join(_cli_help(cmd, "train").split())
        for path, (qt, spec) in w.fields.items():
            assert spec == option_spec(w.CONFIG, path)
            assert qt.toolTip() == spec.help
            if not (path == "mode" and cmd == "expression"):  # the widget adds "auto" first
                assert get_value(qt, spec) == spec.default, path
            if path in ("epochs", "gene.epochs", "gene.n_latent", "loss"):
                assert re.search(re.escape(" ".join(spec.help.split())) + r" \(default ",
                                 text), (cmd, path)


def test_cli_flag_bounds_from_metadata(capsys):
    from napari_stexp.cli import main

    with pytest.raises(SystemExit) as e:
        main(["expression", "train", "--data", "x", "--out", "y", "--smooth-neighbours", "2"])
    assert e.value.code == 2
    assert "smooth_neighbours: must be at most 1.0" in capsys.readouterr().err


def test_one_target_order_section_policy_and_image_lookup(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-stexp", "synthetic_slide")
    ew, cw = _widgets(viewer)
    targets = [[w.target.itemText(i) for i in range(w.target.count())] for w in (ew, cw)]
    assert targets[0] == targets[1] == ["SYN1", "slide: SYN1 H&E"]
    assert ew.checked_sections() == cw.checked_sections() == ["SYN1"]
    for w in (ew, cw):
        imgs = w._images_for(["SYN1"])
        assert list(imgs) == ["SYN1"]
        assert imgs["SYN1"].levels[0].shape == viewer.layers["SYN1 H&E"].data[0].shape


def test_presets_are_not_overridden_by_the_form(make_napari_viewer):
    from dataclasses import asdict

    from napari_stexp.models.batch_agnostic import ClassifierConfig
    from napari_stexp.models.mclstexp_config import PRESETS

    ew, cw = _widgets(make_napari_viewer())
    cw.quick.setChecked(True)
    assert asdict(cw.train_config()) == asdict(ClassifierConfig.tiny())
    cw.quick.setChecked(False)
    assert cw.train_config().epochs == ClassifierConfig().epochs
    ew.preset.setCurrentText("tiny")
    opts = ew.train_options()
    for k in ("backbone", "epochs", "input_size", "batch_size"):
        assert opts[k] == PRESETS["tiny"][k]


def test_cancel_is_reported_as_cancelled(make_napari_viewer, qtbot):
    from napari_stexp.errors import CancelledError

    ew, _ = _widgets(make_napari_viewer())

    def job():
        raise CancelledError("stopped")

    ew._run(job, label="training")
    # the job ends at once: wait on its effect, not on a signal that may already have fired
    qtbot.waitUntil(lambda: ew.status.text() == "cancelled" and ew.train_btn.isEnabled(),
                    timeout=10_000)
    assert ew.status.text() == "cancelled"
    assert ew.train_btn.isEnabled()
