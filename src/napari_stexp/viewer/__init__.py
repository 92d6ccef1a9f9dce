"""Qt-free viewer logic (napari model objects allowed, no qtpy)."""
