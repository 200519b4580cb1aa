"""A tiny deterministic YAML emitter for manifests: block mappings and sequences, flow lists of
scalars, and scalars quoted whenever a YAML reader could take them for anything but a string.

PyYAML is not a runtime dependency of the mesh, and manifests need only this much: dicts keep
their insertion order (``apiVersion``, ``kind``, ``metadata``, ``spec`` read top-down), strings
that are not plainly words are written as JSON strings (JSON's double-quoted form is valid YAML),
so ``"8080"``, ``"true"``, ``"on"`` or ``"0440"`` stay strings. A multi-line string (a PromQL
expression of the alert rules) is a literal block (``|-``) where that reads back exactly, so it
can be read as written, and a one-line string holding double quotes (its label matchers) is
single-quoted, where JSON would escape each of them.
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
_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./-]*\Z")
_RESERVED = frozenset({"y", "n", "yes", "no", "true", "false", "on", "off", "null"})
_INDENT = "  "
_FLOW_WIDTH = 100
# A literal block keeps every character of its lines: only lines of printable characters (no
# tab), none ending in whitespace, the first one neither empty nor indented (YAML would take its
# indentation for the block's), and no final line break (``|-`` strips it).
_BLOCK_LINE = re.compile(r"^[^\x00-\x1f\x7f\x85\u2028\u2029\ufeff]*\Z")


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
        if '"' in value and "\n" not in value and _BLOCK_LINE.match(value):
            # Inside single quotes only the quote itself is special (doubled).
            return "'" + value.replace("'", "''") + "'"
        return json.dumps(value)
    raise TypeError(f"cannot emit {type(value).__name__} {value!r}")


def _is_block(value: Data) -> bool:
    if not isinstance(value, str) or "\n" not in value or value.endswith("\n"):
        return False
    lines = value.split("\n")
    return (lines[0] != "" and not lines[0][0].isspace()
            and all(_BLOCK_LINE.match(line) and line == line.rstrip() for line in lines))


def _block(head: str, text: str, depth: int) -> list[str]:
    pad = _INDENT * depth
    return [f"{head} |-", *(f"{pad}{line}" if line else "" for line in text.split("\n"))]


def _is_scalar(value: Data) -> bool:
    return value is None or isinstance(value, str | int | bool)


def _mapping(data: Mapping[str, Data], depth: int) -> list[str]:
    pad = _INDENT * depth
    lines: list[str] = []
    for key, value in data.items():
        head = f"{pad}{_scalar(key)}:"
        if _is_block(value):
            lines += _block(head, str(value), depth + 1)
        elif _is_scalar(value):
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
        if _is_block(item):
            lines += _block(f"{pad}-", str(item), depth + 1)
        elif _is_scalar(item):
            lines.append(f"{pad}- {_scalar(item)}")
        elif isinstance(item, Mapping) and item:
            body = _mapping(item, depth + 1)
            lines += [f"{pad}- {body[0].lstrip()}", *body[1:]]
        else:
            raise TypeError(f"cannot emit {item!r} in a sequence")
    return lines
