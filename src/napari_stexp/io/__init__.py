"""Readers and writers (no Qt). See :func:`napari_stexp.io.open_any` for the dispatcher."""
