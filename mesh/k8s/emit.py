"""A tiny deterministic YAML emitter for manifests: block mappings and sequences, flow lists of
scalars, and scalars quoted whenever a YAML reader could take them for anything but a string.

PyYAML is not a runtime dependency of the mesh, and manifests need only this much: dicts keep
their insertion order (``apiVersion``, ``kind``, ``metadata``, ``spec`` read top-down), strings
that are not plainly words are written as JSON strings (JSON's double-quoted form is valid YAML),
so ``"8080"``, ``"true"``, ``"on"`` or ``"0440"`` stay strings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["Data", "document", "documents"]

Data = object  # a tree of dict, list, str, int, bool and None

# Plain only when every YAML 1.1 and 1.2 reader sees a string: starts with a letter, "_" or "/",
# holds no character that means something (":", "#", ",", brackets, quotes, spaces), and is not
# one of the words YAML 1.1 reads as booleans or null.
_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./-]*$")
_RESERVED = frozenset({"y", "n", "yes", "no", "true", "false", "on", "off", "null"})
_INDENT = "  "
_FLOW_WIDTH = 100


def document(data: Mapping[str, Data]) -> str:
    """One YAML document for ``data`` (a mapping), ending with a newline."""
    return "\n".join(_mapping(data, 0)) + "\n"


def documents(items: Iterable[Mapping[str, Data]]) -> str:
    """Several documents, separated by ``---`` lines."""
    return "---\n".join(document(item) for item in items)


def _scalar(value: Data) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if _PLAIN.match(value) and value.lower() not in _RESERVED:
            return value
        return json.dumps(value)
    raise TypeError(f"cannot emit {type(value).__name__} {value!r}")


def _is_scalar(value: Data) -> bool:
    return value is None or isinstance(value, str | int | bool)


def _mapping(data: Mapping[str, Data], depth: int) -> list[str]:
    pad = _INDENT * depth
    lines: list[str] = []
    for key, value in data.items():
        head = f"{pad}{_scalar(key)}:"
        if _is_scalar(value):
            lines.append(f"{head} {_scalar(value)}")
        elif isinstance(value, Mapping):
            if value:
                lines += [head, *_mapping(value, depth + 1)]
            else:
                lines.append(f"{head} {{}}")
        elif isinstance(value, Sequence):
            lines += _sequence_under(head, value, depth)
        else:
            raise TypeError(f"cannot emit {type(value).__name__} under {key!r}")
    return lines


def _sequence_under(head: str, items: Sequence[Data], depth: int) -> list[str]:
    if not items:
        return [f"{head} []"]
    if all(_is_scalar(item) for item in items):
        # Short lists of words read best on one line: args: [serve, auth].
        line = f"{head} [{', '.join(_scalar(item) for item in items)}]"
        if len(line) <= _FLOW_WIDTH:
            return [line]
    return [head, *_sequence(items, depth)]


def _sequence(items: Sequence[Data], depth: int) -> list[str]:
    # Items of a block sequence sit at their key's indentation ("- " counts as indentation).
    pad = _INDENT * depth
    lines: list[str] = []
    for item in items:
        if _is_scalar(item):
            lines.append(f"{pad}- {_scalar(item)}")
        elif isinstance(item, Mapping) and item:
            body = _mapping(item, depth + 1)
            lines += [f"{pad}- {body[0].lstrip()}", *body[1:]]
        else:
            raise TypeError(f"cannot emit {item!r} in a sequence")
    return lines
