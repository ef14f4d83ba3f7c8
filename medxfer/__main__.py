"""``python -m medxfer`` runs the command-line interface."""

from medxfer.pipeline.cli import main

raise SystemExit(main())
