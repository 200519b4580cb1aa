"""Command line entry: ``python -m codegen [--check]``."""

from __future__ import annotations

import sys

from codegen.generate import main

if __name__ == "__main__":
    sys.exit(main())
