"""Slide access: lazy multiscale pyramids, slide metadata and patch reads around spots."""
