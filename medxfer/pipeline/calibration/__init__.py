"""Logits to calibrated probabilities.

Owns the post-hoc calibrators fitted on validation logits and the calibration metrics
(``calibrators``). Imports nothing else from ``medxfer.pipeline``.
"""
