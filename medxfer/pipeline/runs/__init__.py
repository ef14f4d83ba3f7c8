"""A trained run on disk: its files, their names and the checks that they belong together.

Owns the run directory as one object (``trained_run.TrainedRun``, which ``evaluate``,
``predict``, ``export`` and the demo read a run through), the names of its files (``files``),
the training configuration (``config``, with its settings, rules and checks in ``config_settings``,
``config_rules`` and ``config_checks``), weights and recipe (``saving``) and the record of what a
run ran on (``environment``). May import ``models``, ``decoding``, ``calibration``,
``evaluation`` and ``reporting``.
"""
