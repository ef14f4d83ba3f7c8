"""Logits and labels to the figures a reviewer asks for: ``metrics.json``'s content.

Owns ``evaluator.evaluate`` (every split scored with the decision rule learnt on validation),
built from modules with one job each: ``inputs`` (what an evaluation takes), ``decision`` (the
``Evaluator``: calibration and threshold fitted on validation, saved as ``calibration.json``),
``threshold`` (choosing the operating threshold), ``scored`` (one split's scores and estimates),
``checked`` and ``resampled`` (patient-clustered and bootstrap intervals), ``overall`` (the
whole-split entry), ``subgroups`` and ``subgroup_report`` (who is in which group, and the group
entries), ``entries`` (the typed report entries), ``checks`` (overfitting and size warnings),
``flags`` (the bias flags), ``transfer`` (the transfer warnings) and ``simulation`` (test sets
with known truth). ``schema`` types ``metrics.json`` and ``wording`` is the one place figures
become text. May import ``statistics`` and ``calibration``.
"""
