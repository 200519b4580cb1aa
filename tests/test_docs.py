"""The docs stay true: their runnable examples run against a live mesh, their links resolve, and
they point at nothing outside the repository.

Which blocks run: a fenced block whose fence line comes right after a line holding only
``<!-- runnable -->`` (an HTML comment, which GitHub does not render), in README.md, docs/*.md
or a folder's README.md. Only ``python`` and shell (``sh``, ``bash``, ``shell``) blocks may be
marked; blocks that need a token from outside, a secure mesh, Kubernetes or a long run are
left unmarked.

How they run:

- One ``python -m mesh up`` for the whole module (fixture ``mesh``), on free ports, with its
  data in a temporary folder and no ``MESH_*`` variables inherited. The fixture polls, within
  READY_TIMEOUT, until ``/readyz`` answers 200, the ingress lists every service and Envoy routes
  public HTTP/JSON paths; at the end it stops the mesh with SIGTERM (a kill if it is still there
  after STOP_TIMEOUT).
- The docs use the default ports. Before a block runs, ``localhost:PORT`` and
  ``127.0.0.1:PORT`` for 4222 (NATS), 50051 (gRPC ingress), 8000 (Envoy) and 8080 (admin
  server) become the fixture's ports, and ``MESH_NATS_URL`` is set to its NATS, so ``mesh call``
  and ``mesh services`` without flags reach it. ``.venv/bin/`` becomes the folder of this
  interpreter's executables (the venv may live elsewhere, as in CI).
- A python block runs with this interpreter, a shell block with ``bash -e -o pipefail``; both in
  a fresh temporary folder, with this interpreter's bin folder first on PATH (so ``python``,
  ``mesh`` and ``grpcurl`` are the venv's). Each must exit 0 within BLOCK_TIMEOUT seconds.

Besides: every relative link of those files (and its ``#heading``, by GitHub's anchor rules)
leads to something in the repository, no doc or source file names a Markdown file the
repository does not hold, and docs/README.md lists every page of docs/.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mesh import catalogue
from nats_transport.testing import free_port
from tests._waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MARKER = "<!-- runnable -->"
LANGUAGES = {"python": "python", "sh": "shell", "bash": "shell", "shell": "shell"}
MARKDOWN_NAME = re.compile(r"(?<![\w/.-])([\w.-]+\.md)\b")
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
BLOCK_TIMEOUT = 30.0
FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})(.*)$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def _documents() -> list[Path]:
    """README.md, docs/*.md and each top-level folder's README.md (hidden folders skipped)."""
    found = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found += sorted(p for p in ROOT.glob("*/README.md") if not p.parent.name.startswith(".") and p not in found)
    return found


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@dataclass(frozen=True)
class Block:
    """One fenced code block of a document."""

    document: Path
    line: int  # of the opening fence, 1-based
    info: str
    code: str
    runnable: bool

    @property
    def language(self) -> str:
        return self.info.split()[0].lower() if self.info else ""

    @property
    def name(self) -> str:
        return f"{_relative(self.document)}:{self.line}"


@dataclass
class Parsed:
    """A document's code blocks, the text outside them, its heading anchors, and misplaced markers."""

    blocks: list[Block]
    prose: list[str]
    anchors: set[str]
    stray_markers: list[int]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _parse(document: Path) -> Parsed:
    lines = document.read_text().splitlines()
    parsed = Parsed([], [], set(), [])
    seen: dict[str, int] = {}
    index = 0
    while index < len(lines):
        line = lines[index]
        opening = FENCE.match(line)
        if opening is None:
            heading = HEADING.match(line)
            if heading:
                slug = _slug(heading.group(2))
                parsed.anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
                seen[slug] = seen.get(slug, 0) + 1
            if line.strip() == MARKER and not (index + 1 < len(lines) and FENCE.match(lines[index + 1])):
                parsed.stray_markers.append(index + 1)
            parsed.prose.append(line)
            index += 1
            continue
        fence = opening.group(1)
        closing = re.compile(rf"^\s{{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = index + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        runnable = index > 0 and lines[index - 1].strip() == MARKER
        code = "\n".join(lines[index + 1:end]) + "\n"
        parsed.blocks.append(Block(document, index + 1, opening.group(2).strip(), code, runnable))
        index = end + 1
    return parsed


PARSED = {document: _parse(document) for document in _documents()}
RUNNABLE = [block for parsed in PARSED.values() for block in parsed.blocks if block.runnable]


# -- the live mesh ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Mesh:
    """A running ``mesh up`` and the ports it was given."""

    nats_port: int
    grpc_port: int
    http_port: int
    admin_port: int

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    def localised(self, code: str) -> str:
        """``code`` with the default ports replaced by this mesh's, and ``.venv/bin/`` by ours."""
        ports = {"4222": self.nats_port, "50051": self.grpc_port, "8000": self.http_port, "8080": self.admin_port}
        code = re.sub(r"(?<![\w.-])(localhost|127\.0\.0\.1):(4222|50051|8000|8080)\b",
                      lambda m: f"{m.group(1)}:{ports[m.group(2)]}", code)
        return re.sub(r"(?<![\w/.-])\.venv/bin/", f"{BIN}/", code)


def _environment(**extra: str) -> dict[str, str]:
    """Our environment without MESH_* settings, with this interpreter's bin folder first on PATH."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MESH_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def _http(url: str, body: bytes | None = None) -> int:
    """The HTTP status of a GET (or a JSON POST with ``body``), 0 when nothing answered."""
    headers = {"content-type": "application/json"} if body is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        error.close()
        return int(error.code)
    except OSError:
        return 0


def _ingress_lists_every_service(port: int) -> bool:
    """Whether the gRPC ingress's reflection lists the services of every built target."""
    modules = [catalogue.load(target) for target in catalogue.built_targets()]
    wanted = {name for module in modules if module is not None for name in module.SERVICE_NAMES}
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            for reply in stub.ServerReflectionInfo(iter([request]), timeout=2):
                return wanted <= {service.name for service in reply.list_services_response.service}
    except grpc.RpcError:
        pass
    return False


def _poll(condition: Callable[[], bool], deadline: float, what: str, alive: Callable[[], str | None]) -> None:
    """Return once ``condition()`` holds; fail at ``deadline`` (monotonic), or as soon as ``alive()``
    says why the mesh stopped."""
    def reached() -> bool:
        problem = alive()
        if problem is not None:
            pytest.fail(f"mesh up stopped while waiting for {what}:\n{problem}")
        return condition()

    try:
        wait_until(reached, max(0.0, deadline - time.monotonic()), what)
    except AssertionError:
        pytest.fail(f"mesh up: {what} not reached within {READY_TIMEOUT} s of its start")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """``python -m mesh up`` on free ports, once it is ready and Envoy routes; stopped after the module."""
    folder = tmp_path_factory.mktemp("mesh-up")
    ports = Mesh(nats_port=free_port(), grpc_port=free_port(), http_port=free_port(), admin_port=free_port())
    command = [sys.executable, "-m", "mesh", "up", "--data-dir", str(folder / "data"),
               "--nats-port", str(ports.nats_port), "--nats-monitor-port", str(free_port()),
               "--grpc-port", str(ports.grpc_port), "--http-port", str(ports.http_port),
               "--admin-port", str(ports.admin_port)]
    log = folder / "mesh-up.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=folder, stdout=output, stderr=subprocess.STDOUT, env=_environment())

    def alive() -> str | None:
        if process.poll() is None:
            return None
        return f"exit code {process.returncode}\n{log.read_text(errors='replace')[-3000:]}"

    deadline = time.monotonic() + READY_TIMEOUT
    try:
        _poll(lambda: _http(f"http://127.0.0.1:{ports.admin_port}/readyz") == 200, deadline, "/readyz 200", alive)
        # The ingress's discovery, and Envoy's routes that follow it, may trail readiness briefly.
        _poll(lambda: _ingress_lists_every_service(ports.grpc_port), deadline, "every service in the ingress", alive)
        edge = f"http://127.0.0.1:{ports.http_port}"
        _poll(lambda: _http(f"{edge}/v1/weather-manager/regions/meadow/weather") == 200
              and _http(f"{edge}/v1/language-system/text:detect", b'{"text": "hello there"}') == 200,
              deadline, "routes through Envoy", alive)
        # Only mesh up's own lines: grpc's fork warning (uvloop forks to spawn the hosts) is off.
        assert "fork() handlers" not in log.read_text(errors="replace")
        yield ports
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _run(block: Block, mesh: Mesh, folder: Path) -> subprocess.CompletedProcess[str]:
    code = mesh.localised(block.code)
    if LANGUAGES[block.language] == "python":
        script = folder / "block.py"
        command = [sys.executable, script.name]
    else:
        script = folder / "block.sh"
        command = ["bash", "-e", "-o", "pipefail", script.name]
    script.write_text(code)
    return subprocess.run(command, cwd=folder, env=_environment(MESH_NATS_URL=mesh.nats_url),
                          capture_output=True, text=True, timeout=BLOCK_TIMEOUT, check=False)


# -- tests ------------------------------------------------------------------------------------


def test_every_runnable_marker_sits_right_above_a_python_or_shell_block() -> None:
    stray = [f"{_relative(doc)}:{line}" for doc, parsed in PARSED.items() for line in parsed.stray_markers]
    assert not stray, f"{MARKER} not followed by a fenced block: {stray}"
    other = [block.name for block in RUNNABLE if block.language not in LANGUAGES]
    assert not other, f"only python and shell blocks can run: {other}"


def test_the_client_gateway_and_operations_pages_have_runnable_examples() -> None:
    counted = {page: sum(1 for block in RUNNABLE if _relative(block.document) == page)
               for page in ("docs/python-client.md", "docs/gateway.md", "docs/operations.md")}
    assert all(counted.values()), counted


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda block: block.name)
def test_each_runnable_block_exits_0_against_a_live_mesh(block: Block, mesh: Mesh, tmp_path: Path) -> None:
    try:
        result = _run(block, mesh, tmp_path)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"{block.name} ran longer than {BLOCK_TIMEOUT} s:\n{expired.stdout!r}\n{expired.stderr!r}")
    assert result.returncode == 0, (
        f"{block.name} exited {result.returncode}\n--- block as run\n{mesh.localised(block.code)}"
        f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    )


def test_every_relative_link_points_at_a_file_and_heading_that_exist() -> None:
    broken = []
    for document, parsed in PARSED.items():
        for line in parsed.prose:
            for target in LINK.findall(INLINE_CODE.sub("", line)):
                if SCHEME.match(target):
                    continue
                path, _, anchor = target.partition("#")
                linked = (document.parent / path).resolve() if path else document
                if not linked.exists() or ROOT not in (linked, *linked.parents):
                    broken.append(f"{_relative(document)}: {target} (no such file in the repository)")
                elif anchor and linked.suffix == ".md" and anchor not in _parse(linked).anchors:
                    broken.append(f"{_relative(document)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def _tracked_files() -> list[Path]:
    """The repository's files: git's list in a checkout, else every file outside hidden folders."""
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return [p for p in ROOT.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(ROOT).parts)]
    return [ROOT / name for name in listed.stdout.split()]


def test_no_doc_or_source_file_refers_to_markdown_files_outside_the_repository() -> None:
    tracked = _tracked_files()
    held = {path.name for path in tracked if path.suffix == ".md"}
    readers = [*PARSED, *(path for path in tracked if path.suffix == ".py")]
    mentions = [f"{_relative(path)}: {name}" for path in readers
                for name in MARKDOWN_NAME.findall(path.read_text(errors="replace")) if name not in held]
    assert not mentions, mentions


def test_every_page_in_docs_is_listed_in_its_readme() -> None:
    index = (ROOT / "docs" / "README.md").read_text()
    pages = [page.name for page in sorted((ROOT / "docs").glob("*.md")) if page.name != "README.md"]
    assert [page for page in pages if f"]({page})" not in index] == []
