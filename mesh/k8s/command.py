"""``mesh k8s render [--out DIR] [--check]`` and ``mesh k8s service-keys --data-dir DIR``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mesh import catalogue
from mesh.k8s.render import compare, render, write
from mesh.security import read_identity

__all__ = ["add_render_arguments", "add_service_keys_arguments", "default_out", "run_render", "run_service_keys"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_CHECKOUT = Path(__file__).resolve().parents[2]


def default_out() -> Path:
    """``k8s/`` of the source checkout this package runs from, else ``./k8s``."""
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "mesh").is_dir():
        return _CHECKOUT / "k8s"
    return Path("k8s")


def add_render_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``mesh k8s render``."""
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="where the tree goes (default: k8s/ of the source checkout)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 with a one-line summary if DIR differs from what would be rendered")


def run_render(args: argparse.Namespace) -> int:
    """Render (or check) the tree; the exit code."""
    out: Path = args.out or default_out()
    files = render()
    if args.check:
        difference = compare(files, out)
        if difference:
            print(f"mesh k8s render --check: {out} is out of date ({difference.summary()}); "
                  "run 'mesh k8s render'", file=sys.stderr)
            return EXIT_FAILED
        print(f"mesh k8s render --check: {out} is up to date ({len(files)} files)")
        return EXIT_OK
    try:
        written = write(files, out)
    except OSError as error:
        print(f"mesh k8s render: error: cannot write {error.filename or out}: {error.strerror or error}",
              file=sys.stderr)
        return EXIT_USAGE
    print(f"mesh k8s render: {len(files)} files in {out}, {len(written)} written")
    return EXIT_OK


def add_service_keys_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``mesh k8s service-keys``."""
    parser.add_argument("--data-dir", type=Path, required=True, metavar="DIR",
                        help="the --data-dir given to 'mesh security init'")


def run_service_keys(args: argparse.Namespace) -> int:
    """Write ``DIR/secrets/service-keys.json``: ``{target: public nkey}``, what the auth target
    reads from ``MESH_AUTH_SERVICE_KEYS`` to tell which target asks for a service token."""
    secrets: Path = args.data_dir / "secrets"
    keys = {}
    for target in catalogue.built_targets():
        try:
            keys[target] = read_identity(secrets / target).nkey
        except (OSError, ValueError, KeyError) as error:
            print(f"mesh k8s service-keys: error: no identity for {target} in {secrets} ({error}); "
                  f"run 'mesh security init --data-dir {args.data_dir}' first", file=sys.stderr)
            return EXIT_USAGE
    path = secrets / "service-keys.json"
    path.write_text(json.dumps(keys, indent=2, sort_keys=True) + "\n")
    print(f"mesh k8s service-keys: wrote {path} ({len(keys)} targets)")
    return EXIT_OK
