"""`python -m goipd`: the same as the `goipd` command."""

from goipd.cli import main

raise SystemExit(main())
