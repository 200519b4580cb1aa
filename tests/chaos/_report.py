"""The chaos suite's settings (quick by default, longer through the environment) and its one
summary line per scenario.

- ``MESH_CHAOS_ROUNDS=<n>``: faults per scenario (1).
- ``MESH_CHAOS_SECONDS=<s>``: seconds of load after each fault, at least (3); for the slow
  consumer, how long its streams stay stuck.
- ``MESH_CHAOS_REPORT=<file>``: also append each summary to that file, one JSON object a line.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROUNDS = int(os.environ.get("MESH_CHAOS_ROUNDS", "1"))
SECONDS = float(os.environ.get("MESH_CHAOS_SECONDS", "3"))


def time_limit(per_round: float) -> float:
    """A pytest timeout for a scenario of ROUNDS rounds of ``per_round`` s plus SECONDS of load each."""
    return 60 + ROUNDS * (per_round + SECONDS)


@dataclass
class Summary:
    """What one scenario (or one variant of it) cost: calls, failures by code, recovery."""

    scenario: str
    calls: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    recovery_s: list[float] = field(default_factory=list)  # one per fault
    worst_latency_s: float = 0.0
    notes: dict[str, object] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)

    def line(self) -> str:
        failed = ", ".join(f"{code} {n}" for code, n in self.failed.items()) or "none"
        recovery = ", ".join(f"{r:.2f}" for r in self.recovery_s) or "-"
        notes = "".join(f"; {key} {_show(value)}" for key, value in self.notes.items())
        return (f"chaos {self.scenario}: {self.calls} calls, failed: {failed}; recovery s: {recovery}; "
                f"worst latency {self.worst_latency_s:.2f} s{notes}")

    def publish(self) -> None:
        """Print the line (shown with -s or -rP) and append the JSON to MESH_CHAOS_REPORT."""
        print(self.line())
        for detail in self.details:
            print(f"    {detail}")
        report = os.environ.get("MESH_CHAOS_REPORT")
        if report:
            with Path(report).open("a") as out:
                out.write(json.dumps({**asdict(self), "rounds": ROUNDS, "seconds": SECONDS}) + "\n")


def _show(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)
