"""Logits and labels to the figures a reviewer asks for: ``metrics.json``'s content.

Owns the evaluator (calibration and threshold learnt on validation, applied to every split;
``evaluator``), the bias flags (``flags``), the transfer warnings (``transfer``) and simulated
test sets with known truth (``simulation``). May import ``statistics`` and ``calibration``.
"""
