"""CPU time and peak memory of a process, read from /proc (Linux; psutil is not a dependency)."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process (all its threads) has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name (which may contain spaces) start at field 3 (state);
    # utime and stime are fields 14 and 15.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size (VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmHWM for process {pid}")


class CpuWindow:
    """CPU seconds each of some processes spends between :meth:`open` and :meth:`close`."""

    def __init__(self, pids: tuple[int, ...]) -> None:
        self.pids = pids
        self._before: list[float] = []

    def open(self) -> None:
        self._before = [cpu_seconds(pid) for pid in self.pids]

    def close(self) -> list[float]:
        """The CPU seconds of each process (in ``pids`` order) since :meth:`open`."""
        return [cpu_seconds(pid) - b for pid, b in zip(self.pids, self._before, strict=True)]
