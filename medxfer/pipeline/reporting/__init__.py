"""Metrics to words and files: ``report.html``, ``model_card.md``, ``metrics.json``.

Owns presentation only; it computes no metric. It reads the ``metrics.json`` structure
(``evaluation.schema.Metrics``) and words figures with ``evaluation.wording``:

- ``report``: the HTML page (template ``templates/report.html.j2``), built from ``summary`` (the
  plain-language summary and its flags), ``tables`` (discrimination, per class, calibration,
  overfitting), ``subgroups`` (the bias check's tables) and ``reproducibility``, with ``figures``
  (matplotlib PNGs);
- ``model_card``: the Markdown card (template ``templates/model_card.md.j2``);
- ``cells`` (table cells and split names) and ``rendering`` (the Jinja2 environment), shared by both;
- ``outputs``: writing an evaluation's files and the terminal headline.

May import ``evaluation`` and ``statistics``.
"""
