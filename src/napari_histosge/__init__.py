"""napari-histosge: high-resolution spatial transcriptomics from H&E histology.

The core (readers, slide access, features, models, training, super-resolution,
evaluation, CLI) never imports Qt or napari; the plugin lives in ``_widgets``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import HistosgeError, InputError

__all__ = ["HistosgeError", "InputError", "__version__"]
