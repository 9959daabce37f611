"""``python -m cano``: the same as the ``cano`` command."""

from cano.cli import main

raise SystemExit(main())
