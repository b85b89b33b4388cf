"""Evaluation: per-gene metrics, baselines, spatial-domain ARI and uncertainty calibration."""
