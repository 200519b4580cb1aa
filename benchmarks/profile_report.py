"""The profile section of RESULTS.md: where the CPU time of each profiled process went."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.profiling import Frame, Profile
from benchmarks.report import Measurement, case_name, row

ROLES = ("server", "client")


@dataclass(frozen=True, slots=True)
class ProfiledCase:
    """The profiles of one case's server and client, and what the window measured meanwhile."""

    profiles: dict[str, Profile]  # by role
    measurement: Measurement

    def cpu(self, role: str) -> float:
        return self.measurement.server_cpu if role == "server" else self.measurement.client_cpu


Profiles = dict[tuple[str, int], ProfiledCase]  # by (transport, in flight)


def _share(count: int, total: int) -> str:
    return f"{100 * count / total:.1f}%" if total else "-"


def _areas(profiles: dict[str, Profile]) -> list[str]:
    roles = [r for r in ROLES if r in profiles]
    combined: Counter[str] = Counter()
    for role in roles:
        p = profiles[role]
        combined.update({area: n / p.samples for area, n in p.areas.items()} if p.samples else {})
    lines = [row(["area (self time)", *(f"{r} share" for r in roles)]), row(["---", *("---:" for _ in roles)])]
    for area, _ in combined.most_common(12):
        lines.append(row([area, *(_share(profiles[r].areas[area], profiles[r].samples) for r in roles)]))
    return lines


def _top(counter: Counter[Frame], total: int, count: int, keep: Sequence[str] = ()) -> list[tuple[str, str]]:
    """The ``count`` frames with most samples (only areas starting with one of ``keep``, if given)."""
    chosen = [(f, n) for f, n in counter.most_common() if not keep or f.area.startswith(tuple(keep))]
    return [(f.show(), _share(n, total)) for f, n in chosen[:count]]


def _side_by_side(title: str, columns: dict[str, list[tuple[str, str]]]) -> list[str]:
    roles = list(columns)
    lines = [row(["#", *[cell for r in roles for cell in (f"{r}: {title}", "share")]])]
    lines.append(row(["---:", *["---", "---:"] * len(roles)]))
    depth = max((len(c) for c in columns.values()), default=0)
    for i in range(depth):
        cells = [str(i + 1)]
        for r in roles:
            name, share = columns[r][i] if i < len(columns[r]) else ("", "")
            cells += [f"`{name}`" if name else "", share]
        lines.append(row(cells))
    return lines


def _summary(profiles: dict[str, Profile]) -> str:
    parts = []
    for role in ROLES:
        p = profiles.get(role)
        if p is None or not p.samples:
            continue
        top = ", ".join(f"{area} {_share(n, p.samples)}" for area, n in p.areas.most_common(4))
        parts.append(f"{role}: {top}")
    return "Largest shares of self time - " + "; ".join(parts) + "."


def _gil_line(case: ProfiledCase, samples_per_second: int, seconds: float) -> str:
    parts = []
    for role, p in case.profiles.items():
        gil = p.samples / samples_per_second / seconds  # cores' worth of GIL-holding time
        cpu = case.cpu(role) / seconds
        parts.append(f"{role} {cpu:.2f} cores of CPU, {gil:.2f} holding the GIL ({p.samples:,} samples)")
    rate = case.measurement.rate
    return f"While profiled: {rate:,.0f} req/s; " + "; ".join(parts) + "."


def section(profiles: Profiles, samples_per_second: int, seconds: float) -> list[str]:
    """Per profiled case: shares by area, top functions by self time, our code by inclusive time."""
    lines = [
        f"py-spy sampled the server and the client process at {samples_per_second} Hz for {seconds:g} s "
        "in one extra window per case (not counted above), without pausing them, taking only the thread "
        "that held the GIL (`--gil --nonblocking`; see `profiling.py` for why). Shares are of those "
        "samples: Python code and the C code it calls without releasing the GIL (protobuf's upb, asyncio's "
        "C parts) count to the innermost Python function; system calls that release the GIL (socket I/O, "
        "`epoll_wait`) are not in them, and are roughly the gap between a process's CPU and its GIL time "
        "below. 'Self' is the innermost Python frame; 'inclusive' counts a function whenever it is on "
        "the stack.",
        "",
    ]
    for (key, n), case in profiles.items():
        by_role = case.profiles
        lines += [f"### {case_name(key, n)}", ""]
        if key == "ingress":
            lines += [
                "Here the 'server' is the ingress process; the 'client' calls it with grpc.aio stubs. grpc.aio's "
                "server runs as Cython coroutines (`grpc._cython`) that py-spy cannot see into, so its HTTP/2 "
                "work shows up as asyncio's `Handle._run`.",
                "",
            ]
        lines += [_gil_line(case, samples_per_second, seconds), ""]
        lines += [_summary(by_role), "", *_areas(by_role), ""]
        lines += _side_by_side(
            "function (self)", {r: _top(p.self_time, p.samples, 10) for r, p in by_role.items()}
        )
        lines.append("")
        ours = {
            r: [(f, s) for f, s in _top(p.inclusive, p.samples, 40, ("nats_transport", "nats-py"))
                if float(s.rstrip("%")) < 90][:10]
            for r, p in by_role.items()
        }
        if any(ours.values()):
            lines += _side_by_side("nats_transport / nats-py function (inclusive)", ours)
            lines.append("")
    return lines
