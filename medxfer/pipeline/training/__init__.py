"""``medxfer train``: a labelled dataset to a trained run.

Owns the training loop, its data, its callbacks and its resumable checkpoint. ``trainer`` wires
one run from modules with one job each: ``run_directory`` (the folder, resuming, undoing a failed
start), ``data`` (decoding and splitting), ``network`` (the network, its cached prefix, ``auto``
settings), ``prefix_cache`` (cached or on-the-fly inputs), ``batches`` (each epoch's batches),
``optimisation`` (AdamW and the learning-rate schedule), ``steps`` (the loss, plain or DANN),
``epoch`` (a training and a validation pass), ``loop`` (the epochs and their callbacks:
``early_stopping``, ``progress``, ``history``, ``checkpointing`` on ``checkpoint``'s file format),
``finishing`` (scoring, saving and reporting the kept network) and ``execution`` (device,
processes, precision). May import every stage below it (``runs``, ``models``, ``decoding``,
``evaluation``, ``reporting``, ``runtime``, ``statistics``); never ``inference`` or ``cli``.
"""
