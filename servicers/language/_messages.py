"""The message catalogue Localize reads (stored messages over built-in ones) and the template
renderer. Pure code."""

from __future__ import annotations

import re
from collections.abc import Mapping

from servicers.language._locales import canonical
from servicers.language.catalogue import Message

__all__ = ["Catalogue", "render"]

# "{{" and "}}" are literal braces; "{name}" a placeholder; any other brace is left as it is.
_TEMPLATE = re.compile(r"\{\{|\}\}|\{([a-z][a-z0-9_]*)\}")


def _forms(message: Message) -> dict[str, str]:
    return {"other": message} if isinstance(message, str) else dict(message)


class Catalogue:
    """Messages by (canonical locale, key): stored ones (from KV) over built-in ones."""

    def __init__(self, builtin: Mapping[str, Mapping[str, Message]]) -> None:
        self._builtin: dict[tuple[str, str], dict[str, str]] = {}
        for tag, messages in builtin.items():
            locale = canonical(tag)
            if locale is None:
                raise ValueError(f"built-in catalogue locale {tag!r} is malformed")
            for key, message in messages.items():
                forms = _forms(message)
                if "other" not in forms:
                    raise ValueError(f"built-in message {tag}/{key} lacks its 'other' form")
                self._builtin[locale, key] = forms
        self._stored: dict[tuple[str, str], dict[str, str]] = {}

    def __repr__(self) -> str:
        return f"<Catalogue builtin={len(self._builtin)} stored={len(self._stored)}>"

    def clear_stored(self) -> None:
        """Forget every stored message (before the bucket is read again)."""
        self._stored = {}

    def put(self, locale: str, key: str, forms: Mapping[str, str]) -> None:
        """Store a message's forms (they must include "other")."""
        self._stored[locale, key] = dict(forms)

    def remove(self, locale: str, key: str) -> None:
        """Forget a stored message; the built-in one, if any, shows again."""
        self._stored.pop((locale, key), None)

    def find(self, locale: str, key: str) -> Mapping[str, str] | None:
        """The forms of a message in exactly this locale, or None."""
        return self._stored.get((locale, key)) or self._builtin.get((locale, key))


def render(template: str, values: Mapping[str, str]) -> tuple[str, list[str]]:
    """Fill ``{name}`` placeholders from ``values``; return the text and the names that had no
    value (in order of first appearance), which stay in the text as ``{name}``."""
    missing: dict[str, None] = {}

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return match.group()[0]  # "{{" -> "{", "}}" -> "}"
        if name in values:
            return values[name]
        missing.setdefault(name, None)
        return match.group()

    return _TEMPLATE.sub(fill, template), list(missing)
