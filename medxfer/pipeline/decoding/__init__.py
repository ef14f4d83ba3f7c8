"""Scan files to prepared tensors, in batches, surviving bad files and dying workers.

Owns decoding a dataset once at the network's input size (``scans``), the worker pool that
turns a crashed decoder into one error row (``recovering_loader``) and the augmentation preview
of one decoded scan (``preview``). Imports ``medxfer.datasets`` and ``medxfer.transforms``;
nothing else from ``medxfer.pipeline``.
"""
