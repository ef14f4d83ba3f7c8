"""Where a job runs: the torch device, decoding worker processes and the ``torchrun`` process group.

Owns device and worker resolution (``device``) and the process group with its rank-0-only
writing and gathering (``distributed``). Imports nothing else from ``medxfer.pipeline``.
"""
