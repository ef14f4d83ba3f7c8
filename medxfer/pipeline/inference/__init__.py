"""Using a trained run: ``medxfer predict``, ``medxfer evaluate`` and ``medxfer export``.

Owns batch prediction over folders of scans (``predict``, with its rows in ``rows``, its output
files in ``prediction_files`` and its lock in ``job_claim``), external validation (``external``)
and export to TorchScript/ONNX (``export``). A run is read only through
``medxfer.pipeline.runs.trained_run``; never imports ``training`` or ``cli``.
"""
