"""``python -m mesh``: the same as the ``mesh`` console script."""

from __future__ import annotations

import sys

from mesh.cli import main

if __name__ == "__main__":
    sys.exit(main())
