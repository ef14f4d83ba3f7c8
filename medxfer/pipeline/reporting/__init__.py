"""Metrics to words and files: ``report.html``, ``model_card.md``, ``metrics.json``.

Owns presentation only (``report``, its template and ``figures``) and writing an evaluation's
files (``outputs``); it computes no metric. May import ``evaluation`` and ``statistics``.
"""
