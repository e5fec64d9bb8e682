"""`python -m taskctl`, the same as the installed `taskctl` command."""

from taskctl.cli import main

raise SystemExit(main())
