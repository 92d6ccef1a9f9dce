"""The viewer tier: Qt-free viewer logic (napari model objects, never ``qtpy``).

- :mod:`.navigator`: the :class:`~.navigator.SlideNavigator` controller.
- :mod:`.layer_links`: how the latent explorer talks to slide layers, embedding sources.

The dock widgets in :mod:`napari_stexp.widgets` wire these to Qt.
"""
