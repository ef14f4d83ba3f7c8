"""Using a trained run: ``medxfer predict``, ``medxfer evaluate`` and ``medxfer export``.

Owns batch prediction over folders of scans (``predict`` with its output files and job lock),
external validation (``external``) and export to TorchScript/ONNX (``export``). A run is read
only through ``medxfer.pipeline.runs``; never imports ``training`` or ``cli``.
"""
