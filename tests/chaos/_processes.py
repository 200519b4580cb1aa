"""Child processes the chaos tests start, kill, stop and continue: ``mesh serve`` replicas and the
small helper scripts beside this file. Each runs in a session of its own, so a signal reaches
the whole process group, and :class:`Processes` cleans every one up whatever the test did."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mesh.supervisor import http_get
from nats_transport.testing import free_port

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


@dataclass
class Child:
    """One child process in its own session; its stderr goes to a temporary file, its stdout to
    a pipe the test reads (``talks``: the helper scripts print a line or two) or nowhere."""

    name: str
    argv: Sequence[str]
    talks: bool = True
    process: subprocess.Popen[bytes] = field(init=False)
    stopped: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        # A file, not a pipe: a pipe nobody reads would fill up and stall the child.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            list(self.argv), cwd=REPO, stdout=subprocess.PIPE if self.talks else subprocess.DEVNULL,
            stderr=self._log, start_new_session=True, env={**os.environ, "PYTHONPATH": path},
        )

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the child's whole process group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def kill(self, *, frozen: bool = False) -> None:
        """SIGKILL the process group and reap it. A stopped group is continued first, so nothing
        stays stopped, unless ``frozen``: then it dies as it is (SIGKILL ends a stopped process
        too), without a moment to answer anything."""
        if self.stopped and not frozen:
            self.cont()
        self.signal(signal.SIGKILL)
        self.process.wait(10)
        self.stopped = False

    def stop(self) -> None:
        """SIGSTOP: the process hangs, its sockets stay open."""
        self.stopped = True
        self.signal(signal.SIGSTOP)

    def cont(self) -> None:
        self.signal(signal.SIGCONT)
        self.stopped = False

    def alive(self) -> bool:
        return self.process.poll() is None

    def read_line(self) -> str:
        """The next line the child prints on stdout (blocking; call from a thread)."""
        assert self.process.stdout is not None
        return self.process.stdout.readline().decode(errors="replace").strip()

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def close(self) -> None:
        if self.alive():
            self.kill()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


class Replica(Child):
    """``mesh serve <targets>`` against ``nats_url``, with its admin server on a free port."""

    def __init__(self, name: str, nats_url: str, *targets: str) -> None:
        self.admin_port = free_port()
        super().__init__(name, [
            sys.executable, "-m", "mesh", "serve", *targets, "--nats-url", nats_url,
            "--admin-host", "127.0.0.1", "--admin-port", str(self.admin_port), "--log-level", "warning",
        ], talks=False)

    async def ready(self) -> bool:
        """/readyz answers 200: connected, and every target serving (in its queue group)."""
        if not self.alive():
            raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.log()[-2000:]}")
        try:
            status, _ = await http_get("127.0.0.1", self.admin_port, "/readyz")
        except (OSError, TimeoutError):
            return False
        return status == 200


def script(name: str, *args: str) -> list[str]:
    """The command line running one of the helper scripts beside this file."""
    return [sys.executable, str(HERE / name), *args]


@dataclass
class Processes:
    """Every child a test started; :meth:`close_all` continues and kills them all."""

    children: list[Child] = field(default_factory=list)

    def replica(self, name: str, nats_url: str, *targets: str) -> Replica:
        replica = Replica(name, nats_url, *targets)
        self.children.append(replica)
        return replica

    def child(self, name: str, argv: Sequence[str]) -> Child:
        child = Child(name, argv)
        self.children.append(child)
        return child

    def close_all(self) -> None:
        for child in self.children:
            child.close()
        self.children.clear()

