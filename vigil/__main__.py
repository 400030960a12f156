"""``python -m vigil`` runs the command line."""

from vigil.cli import main

raise SystemExit(main())
