"""Logits to calibrated probabilities.

Owns the post-hoc calibrators fitted on validation logits with their registry
(``calibrators``), the calibration metrics (``metrics``) and the input checks both share
(``arrays``). Imports nothing else from ``medxfer.pipeline``.
"""
