"""The viewer tier: Qt-free viewer logic (napari model objects, never ``qtpy``).

- :mod:`.navigator`: the :class:`~.navigator.SlideNavigator` controller.
- :mod:`.layer_links`: how the latent explorer talks to slide layers, embedding sources.
- :mod:`.results`: results → layer data for the expression, classifier and β-VAE widgets.

The dock widgets in :mod:`napari_stexp.widgets` wire these to Qt.
"""
