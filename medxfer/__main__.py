"""``python -m medxfer`` runs the command-line interface."""

from medxfer.pipeline.cli.main import main

raise SystemExit(main())
