"""``medxfer train``: a labelled dataset to a trained run.

Owns the training loop, its data, its callbacks and its resumable checkpoint. May import every
stage below it (``runs``, ``models``, ``decoding``, ``evaluation``, ``reporting``, ``runtime``,
``statistics``); never ``inference`` or ``cli``.
"""
