"""The protos pass ``buf lint`` (STANDARD, vendored third_party ignored), as configured in buf.yaml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The buf-bin wheel installs buf beside the interpreter; using that one avoids any other on PATH.
BUF = Path(sys.executable).parent / "buf"


def test_buf_lint_passes() -> None:
    result = subprocess.run([str(BUF), "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
