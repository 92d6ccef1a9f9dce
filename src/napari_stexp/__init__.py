"""napari-stexp: tissue and blood images together with gene expression, in napari.

Importing the package is cheap: no torch, no Qt. Submodules load what they need when called.
"""

__version__ = "0.1.0"

from .errors import InputError, StexpError, StexpWarning

__all__ = ["InputError", "StexpError", "StexpWarning", "__version__"]
