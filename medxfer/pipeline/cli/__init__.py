"""The ``medxfer`` command line and the offline demo.

Owns argument parsing and the subcommands' wiring (``main``) and ``medxfer demo`` (``demo``).
The top of the pipeline: may import every stage; nothing imports it.
"""
