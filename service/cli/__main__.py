"""``python -m service.cli``: the same as the ``genjobs`` console script."""

from service.cli.main import main

raise SystemExit(main())
