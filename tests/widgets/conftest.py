"""Widget tests: the ``gui`` mark and one way to wait for a widget's worker.

Every test in this folder that builds Qt objects (it asks, directly or through another fixture,
for ``make_napari_viewer`` or ``qtbot``) is marked ``gui`` here, so the files need no
``pytestmark``. The GUI-free checks that live beside them (layer links, colour helpers, layer
tuples) stay unmarked and run without a display.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
QT_FIXTURES = {"make_napari_viewer", "qtbot"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents and QT_FIXTURES & set(
                getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.gui)


@pytest.fixture
def wait_worker(qtbot):
    """``wait_worker(worker, timeout=240_000)``: block until ``worker`` (a napari thread worker,
    as the widgets' ``train``/``predict``/``classify`` return it) emits ``finished``; then let the
    event loop deliver the results it queued."""

    def wait(worker, timeout: int = 240_000) -> None:
        assert worker is not None, "the widget started no worker"
        with qtbot.waitSignal(worker.finished, timeout=timeout):
            pass
        qtbot.wait(50)

    return wait
