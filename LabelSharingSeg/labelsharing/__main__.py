"""``python -m labelsharing``: the same command line as ``labelsharing``."""

from labelsharing.cli import main

raise SystemExit(main())
