"""How a sub-spot grid map is made consistent with the measured spots: one list for the library, CLI and plugin.

Kept free of numpy and the pipeline's readers, so the command line's parser and the
Super-resolve widget offer the same choices and default without loading them.

- ``exact``: the cells under each measured footprint are scaled so their mean is its
  measurement (a step at every footprint's edge: each spot a disc on the map);
- ``counting``: the same, toward the measurement read through its counting noise;
- ``smooth``: a smooth ratio field toward the counting-noise estimate, so that around every
  position the footprints' means add up to the measurement's (no disc);
- ``none``: the model's prediction alone.
"""

from __future__ import annotations

from ..errors import InputError

CONSISTENCY = ("exact", "counting", "smooth", "none")
#: The consistency maps get unless asked otherwise: no disc per spot, and on the count-split pooled benchmark
#: (leave one section out) at least as accurate as the others.
DEFAULT_CONSISTENCY = "smooth"
#: ``mask=`` value asking for the tissue to be detected on the slide.
DETECT = "auto"
#: ``mask=`` value asking for no mask, as ``None`` does (the command line's and the widget's way to say it).
NO_MASK = "none"
#: Per footprint, one factor for its cells (a step at its edge).
PER_FOOTPRINT = ("exact", "counting")


def check_consistency(consistency: str) -> None:
    """``consistency`` must be one of :data:`CONSISTENCY`."""
    if consistency not in CONSISTENCY:
        raise InputError(f"unknown consistency {consistency!r}; choose one of {', '.join(CONSISTENCY)}")
