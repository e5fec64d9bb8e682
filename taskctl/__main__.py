"""`python -m taskctl`, the same as the installed `taskctl` command."""

from taskstream.client.cli import main

raise SystemExit(main())
