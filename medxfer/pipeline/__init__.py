"""The pipeline's stages, one subpackage each, in the direction the data flows.

::

    scan files --decoding--> tensors --models--> logits --calibration--> probabilities
        --evaluation--> metrics --reporting--> report.html, model_card.md, metrics.json
    trained run (runs) --inference--> predictions CSV, external report, exported file

A subpackage may import only the ones on lower layers (and ``medxfer.datasets``,
``medxfer.transforms`` and the top-level helpers); ``tests/pipeline/test_layers.py`` checks it:

0. ``runtime``, ``statistics``, ``models``, ``decoding``, ``calibration``
1. ``evaluation``
2. ``reporting``
3. ``runs``
4. ``training``, ``inference`` (the commands that fit or use a run; neither imports the other)
5. ``cli``

``runs.files`` (the names of a run's files) imports nothing and may be imported from any stage.
"""
