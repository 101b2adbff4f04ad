"""Calibration, clipping search and per-layer precision plans (issue #7)."""
