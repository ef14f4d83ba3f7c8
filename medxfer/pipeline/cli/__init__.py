"""The ``medxfer`` command line and the offline demo.

Owns the argument parser (``parser``, the source of the generated CLI reference), what each
subcommand does with its arguments (``commands``), exit codes and error reporting (``main``) and
``medxfer demo`` (``demo``). The top of the pipeline: may import every stage; nothing imports it.
"""
