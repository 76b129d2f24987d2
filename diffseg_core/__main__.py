"""``python -m diffseg_core ...``: see :mod:`diffseg_core.cli`."""
from .cli import main

raise SystemExit(main())
