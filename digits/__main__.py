"""`python -m digits` runs the same command line as `digits`."""

from digits.cli import main

raise SystemExit(main())
