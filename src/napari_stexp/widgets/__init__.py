"""napari dock widgets (Qt lives here and nowhere else).

Importing this package makes torch safe to use next to Qt/Mesa (``_common.guard_torch``): every
dock widget module is imported through it, so no torch path can forget the guard.
"""

from ._common import guard_torch

guard_torch()
