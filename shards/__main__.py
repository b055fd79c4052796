"""``python -m shards`` = the ``sccl-shards`` console script."""

from __future__ import annotations

import sys

from shards.cli import main

sys.exit(main())
