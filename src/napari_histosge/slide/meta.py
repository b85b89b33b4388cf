"""Pixel size (micrometres per pixel) from TIFF-family metadata: SVS, OME, TIFF tags, ImageJ."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

# Micrometres per unit for TIFF ResolutionUnit values we trust (2 = inch is not trusted).
_RES_UNIT_UM = {3: 1e4, "CENTIMETER": 1e4, 4: 1e3, 5: 1.0}


def svs_mpp(description: str) -> float | None:
    """``MPP`` from an Aperio SVS image description, or None."""
    m = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", description)
    return float(m.group(1)) if m else None


def ome_mpp(xml: str) -> float | None:
    """``PhysicalSizeX`` in micrometres from OME-XML, or None."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.endswith("Pixels") and "PhysicalSizeX" in el.attrib:
            unit = el.attrib.get("PhysicalSizeXUnit", "µm")
            factor = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4}.get(unit)
            return float(el.attrib["PhysicalSizeX"]) * factor if factor else None
    return None


def tiff_mpp(tf: Any) -> float | None:
    """Micrometres per level-0 pixel of an open ``tifffile.TiffFile``, or None when unknown."""
    page = tf.pages[0]
    if tf.is_svs:
        return svs_mpp(page.description)
    if tf.is_ome and tf.ome_metadata:
        mpp = ome_mpp(tf.ome_metadata)
        if mpp:
            return mpp
    xres = page.tags.get("XResolution")
    if xres is None:
        return None
    num, den = xres.value
    if not num or not den:
        return None
    px_per_unit = num / den
    unit = page.tags.get("ResolutionUnit")
    unit_value = unit.value if unit is not None else None
    um_per_unit = _RES_UNIT_UM.get(int(unit_value)) if unit_value is not None else None
    ij = tf.imagej_metadata or {}
    if str(ij.get("unit", "")).lower() in ("micron", "um", "µm", "\\u00b5m"):
        um_per_unit = 1.0
    if um_per_unit is None or (px_per_unit <= 1.0 and um_per_unit != 1.0):
        # px_per_unit == 1 is tifffile's default placeholder, not a measurement.
        return None
    return um_per_unit / px_per_unit
