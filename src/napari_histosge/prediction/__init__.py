"""Prediction: positions (N-fold lattice, grids), batched prediction in pieces, dask.distributed."""
