"""The public surface of nats_transport stays what the docs promise: a change here is deliberate.

Each package's ``__all__`` is its public API: sorted, every name in it importable and documented,
and no public name of its own left out. A module-level name is the package's own when the
package defines it (``def``, ``class``, an assignment) or takes it from one of its private
modules; names imported from elsewhere (``typing.Any``, nats-py's ``Client``), submodules, and
names another package here exports are not.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import nats_transport
import nats_transport.aio

ROOT = "nats_transport"
PACKAGES = ("nats_transport", "nats_transport.aio")


def test_nats_transport_exports_exactly_its_documented_names() -> None:
    assert set(nats_transport.__all__) == {
        "Channel", "ChannelOptions", "CircuitBreakerOptions", "CircuitState", "RpcError", "ServerOptions",
        "ServiceConfig", "ServiceConfigError", "TransportOptions", "WATCHDOG_CONNECT_OPTIONS", "WIRE_PROTOCOL_VERSION",
        "aio", "channel",
        "circuit_states", "connection_problem", "detached", "dropped_messages", "guard_connection", "time_remaining",
    }


@pytest.mark.parametrize("package", PACKAGES)
def test_all_is_sorted(package: str) -> None:
    exported = importlib.import_module(package).__all__
    assert list(exported) == sorted(exported)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_name_in_all_imports_and_is_documented(package: str) -> None:
    undocumented = []
    for name in importlib.import_module(package).__all__:
        imported = __import__(package, fromlist=[name])  # what ``from package import name`` does
        assert hasattr(imported, name), f"from {package} import {name} fails"
        if not documented(package, name):
            undocumented.append(name)
    assert undocumented == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_public_name_of_its_own_is_left_out_of_all(package: str) -> None:
    module = importlib.import_module(package)
    left_out = [name for name, value in vars(module).items()
                if not name.startswith("_") and name not in module.__all__ and is_own(package, name, value)]
    assert left_out == []


# -- where a name comes from -----------------------------------------------------------------------


@dataclass(frozen=True)
class Binding:
    """The statement that gives a module-level name its value, in the module that makes it."""

    module: str
    statement: ast.stmt
    following: ast.stmt | None  # the statement after it: an attribute's docstring, if a string
    comment_above: bool  # a comment block directly above it


def is_own(package: str, name: str, value: Any) -> bool:
    """Whether ``name`` in ``package`` is part of the package's own surface (see the module docstring)."""
    if isinstance(value, types.ModuleType):
        return False  # a submodule (or a module imported for use): reached by its own name
    if any(name in importlib.import_module(other).__all__ and getattr(importlib.import_module(other), name) is value
           for other in PACKAGES if other != package):
        return False  # exported, and documented, by another package here
    return binding(package, name) is not None


def documented(package: str, name: str) -> bool:
    """A docstring on the class or function, or for a constant an attribute docstring or a comment
    block directly above its assignment (the two ways this code base documents constants)."""
    value = getattr(importlib.import_module(package), name)
    if isinstance(value, types.ModuleType):
        return bool((value.__doc__ or "").strip())
    found = binding(package, name)
    assert found is not None, f"{package}.{name}: no statement in {ROOT} binds it"
    if isinstance(found.statement, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
        return bool(ast.get_docstring(found.statement))
    docstring = (isinstance(found.following, ast.Expr) and isinstance(found.following.value, ast.Constant)
                 and isinstance(found.following.value.value, str))
    return docstring or found.comment_above


def binding(module_name: str, name: str) -> Binding | None:
    """Where ``name`` of ``module_name`` is made, following imports within ROOT; None when it comes
    from outside ROOT (the standard library, a third-party package, ``__future__``) or is a module."""
    path = Path(inspect.getfile(importlib.import_module(module_name)))
    source = path.read_text()
    lines = source.splitlines()
    body = ast.parse(source).body
    for index, statement in enumerate(body):
        if isinstance(statement, ast.ImportFrom):
            origin = resolved(module_name, path, statement)
            for alias in statement.names:
                if (alias.asname or alias.name) == name:
                    inside = origin.startswith(ROOT) and not is_submodule(origin, alias.name)
                    return binding(origin, alias.name) if inside else None
        elif name in bound_names(statement):
            following = body[index + 1] if index + 1 < len(body) else None
            above = lines[statement.lineno - 2].strip() if statement.lineno > 1 else ""
            return Binding(module_name, statement, following, above.startswith("#"))
    return None


def bound_names(statement: ast.stmt) -> set[str]:
    """The module-level names a statement other than an import binds."""
    if isinstance(statement, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
        return {statement.name}
    if isinstance(statement, ast.Assign):
        return {target.id for target in statement.targets if isinstance(target, ast.Name)}
    if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
        return {statement.target.id}
    return set()


def is_submodule(package: str, name: str) -> bool:
    return isinstance(getattr(importlib.import_module(package), name, None), types.ModuleType)


def resolved(module_name: str, path: Path, statement: ast.ImportFrom) -> str:
    """The absolute module an ``import from`` statement names."""
    if not statement.level:
        return statement.module or ""
    package = module_name if path.name == "__init__.py" else module_name.rpartition(".")[0]
    for _ in range(statement.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{statement.module}" if statement.module else package
