"""A trained run on disk: its files, their names and the checks that they belong together.

Owns the training configuration (``config``), weights and recipe (``saving``), the record of
what a run ran on (``environment``) and the run directory as one object (``trained_run``).
May import ``models``, ``calibration``, ``evaluation`` and ``reporting``.
"""
