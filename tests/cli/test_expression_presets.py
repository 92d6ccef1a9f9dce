"""``expression train``: ``--preset paper`` gives the faithful paper settings, ``--mode auto`` on
a CPU the setting chosen by leave-one-patient-out (explicit flags win); ``--encoder`` is
``--backbone``; unset ``--weights`` means the published file for a foundation model."""

from __future__ import annotations

import argparse

from napari_stexp.commands import expression as X
from napari_stexp.models.mclstexp import CPU_AUTO_DEFAULTS, MclstexpConfig


def _kw(*argv):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    X.register(sub)
    args = p.parse_args(["expression", "train", "--data", "d", "--out", "o", *argv])
    return X._config_overrides(args)


def test_paper_preset_is_the_faithful_config():
    kw = _kw("--mode", "auto", "--device", "cpu", "--preset", "paper")
    cfg = MclstexpConfig(**{k: v for k, v in kw.items() if hasattr(MclstexpConfig, k)})
    paper = MclstexpConfig()
    for k in CPU_AUTO_DEFAULTS:
        assert getattr(cfg, k) == getattr(paper, k)


def test_auto_on_cpu_uses_the_selected_setting_and_flags_win():
    kw = _kw("--mode", "auto", "--device", "cpu")
    assert kw["mode"] == "cached"
    for k, v in CPU_AUTO_DEFAULTS.items():
        assert kw[k] == v
    kw = _kw("--mode", "auto", "--device", "cpu", "--epochs", "3")
    assert kw["epochs"] == 3
    kw = _kw("--mode", "cached", "--device", "cpu")  # explicit mode: the paper's settings
    assert all(k not in kw or kw[k] == getattr(MclstexpConfig(), k) for k in CPU_AUTO_DEFAULTS
               if k != "epochs")


def test_encoder_flag_and_weights_default():
    kw = _kw("--encoder", "uni", "--device", "cpu")
    assert kw["backbone"] == "uni" and kw["weights"] == "pretrained"
    kw = _kw("--backbone", "resnet18", "--device", "cpu")
    assert kw["backbone"] == "resnet18" and kw["weights"] is None
    kw = _kw("--encoder", "uni", "--weights", "none", "--device", "cpu")
    assert kw["weights"] is None
