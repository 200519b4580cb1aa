"""Sampling profiles with py-spy: record a process for a window, then say where its time went.

py-spy attaches from outside (no code in the profiled process). It samples only the thread holding
the GIL (``--gil``): py-spy's idle detection does not work here (threads parked in
``Condition.wait`` or ``epoll_wait`` showed up as busy), and the GIL holder is the one spending
Python CPU. So shares are of the time spent running Python and the C code it calls without
releasing the GIL; system calls that release it (socket sends and receives, ``epoll_wait``) are
outside the samples. ``--nonblocking``: a paused process slowed the sync-channel case by half.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

SAMPLES_PER_SECOND = 250
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")


def py_spy() -> str | None:
    """The py-spy executable beside this interpreter or on PATH, if installed."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` for ``seconds`` into ``output`` (py-spy's raw collapsed stacks)."""
    executable = py_spy()
    if executable is None:
        raise RuntimeError("py-spy is not installed")
    command = [
        executable, "record", "--pid", str(pid), "--duration", str(max(round(seconds), 1)),
        "--rate", str(SAMPLES_PER_SECOND), "--format", "raw", "--function", "--full-filenames",
        "--gil", "--nonblocking",
        "--output", str(output),
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@dataclass(frozen=True, slots=True)
class Frame:
    function: str
    file: str

    @property
    def area(self) -> str:
        """Which layer the code belongs to (the unit of the shares table)."""
        path = self.file.replace("\\", "/")
        if "/nats_transport/" in path:
            return "nats_transport/" + path.rsplit("/nats_transport/", 1)[1]
        for marker, name in _AREAS:
            if marker in path:
                return name
        return "other stdlib" if "/lib/python3" in path else "other"

    def show(self) -> str:
        return f"{self.function} ({self.area})"


_AREAS = (
    ("/site-packages/nats/", "nats-py"),
    ("/google/protobuf/", "protobuf"),
    ("/site-packages/grpc/", "grpcio"),
    ("/gaming/", "generated stubs"),
    ("/benchmarks/", "benchmark harness"),
    ("/asyncio/", "asyncio"),
    ("/selectors.py", "asyncio"),
    ("/concurrent/futures/", "threads and futures"),
    ("/threading.py", "threads and futures"),
    ("/contextvars", "threads and futures"),
)


@dataclass(frozen=True, slots=True)
class Profile:
    """Samples of one process: by leaf frame (self time) and by any frame on the stack (inclusive)."""

    samples: int
    self_time: Counter[Frame]
    inclusive: Counter[Frame]
    areas: Counter[str]

    @classmethod
    def read(cls, path: Path) -> Profile:
        """Parse py-spy's raw output: one ``frame;frame;...;leaf count`` line per distinct stack."""
        samples = 0
        self_time: Counter[Frame] = Counter()
        inclusive: Counter[Frame] = Counter()
        areas: Counter[str] = Counter()
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [f for f in (_parse_frame(text) for text in stack.split(";")) if f is not None]
            if not frames:
                continue
            samples += count
            self_time[frames[-1]] += count
            areas[frames[-1].area] += count
            for frame in set(frames):
                inclusive[frame] += count
        return cls(samples, self_time, inclusive, areas)


def _parse_frame(text: str) -> Frame | None:
    match = _FRAME.match(text.strip())
    if match is None:  # py-spy's "process ..." and "thread ..." pseudo-frames
        return None
    return Frame(match["function"], match["file"])
