"""``python -m bench``: run every benchmark; see `bench.run`."""

from bench.run import main

raise SystemExit(main())
