"""What the language bucket holds, and the two ways to write it: translations and messages.

The API has no call that writes the translation memory or the catalogue (operators and tools
do), so this module is that contract. Keys::

    tm.<source language>.<target tag>.<digest>   a TranslationUnit
    msg.<locale tag>.<message key>                a CatalogueMessage (the key's dots are tokens)

``<digest>`` is the first 16 bytes of SHA-256 over the normalised source text, base64url without
padding: the same text always lands on the same key, so storing it again replaces it. Tags are
canonical BCP 47 (``pt-BR``), valid key tokens as they are. The values are ``TranslationUnit``
and ``CatalogueMessage`` of ``protos/gaming/language/storage/v1/language_records.proto`` (the API
has no message for them); that file is the schema tools write against.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from gaming.language.storage.v1 import language_records_pb2

from servicers.language._locales import canonical, language_of
from servicers.language._plurals import CATEGORIES
from servicers.language._text import normalise
from servicers.storage import KeyValue

__all__ = [
    "MESSAGE_KEY",
    "StoredMessage",
    "StoredTranslation",
    "message_key",
    "parse_key",
    "store_message",
    "store_translation",
    "translation_key",
]

# A message key: dot-separated lower_snake_case segments, at most 256 characters.
MESSAGE_KEY = re.compile(r"(?=.{1,256}$)[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*")
_MAX_TEXT = 5000


@dataclass(frozen=True, slots=True)
class StoredTranslation:
    """One translation-memory entry."""

    source_language: str
    target_locale: str
    source_text: str
    target_text: str

    @classmethod
    def decode(cls, value: bytes) -> StoredTranslation:
        """Parse a stored value (DecodeError if it is not one; ValueError if it is incomplete)."""
        unit = language_records_pb2.TranslationUnit.FromString(value)
        decoded = cls(unit.source_language, unit.target_locale, unit.source_text, unit.target_text)
        if not (decoded.source_language and decoded.target_locale and decoded.source_text and decoded.target_text):
            raise ValueError("a translation unit lacks a field")
        return decoded

    def encode(self) -> bytes:
        """The stored value."""
        return language_records_pb2.TranslationUnit(
            source_language=self.source_language, target_locale=self.target_locale,
            source_text=self.source_text, target_text=self.target_text,
        ).SerializeToString()


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One catalogue message: its template per plural category."""

    forms: Mapping[str, str]

    @classmethod
    def decode(cls, value: bytes) -> StoredMessage:
        """Parse a stored value (DecodeError if it is not one; ValueError without "other")."""
        forms = dict(language_records_pb2.CatalogueMessage.FromString(value).forms)
        if "other" not in forms:
            raise ValueError("a catalogue message lacks its 'other' form")
        return cls(forms)

    def encode(self) -> bytes:
        """The stored value."""
        return language_records_pb2.CatalogueMessage(forms=dict(self.forms)).SerializeToString()


def _digest(text: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(normalise(text).encode()).digest()[:16]).rstrip(b"=").decode()


def translation_key(source_language: str, target_locale: str, source_text: str) -> str:
    """The key of the entry translating ``source_text`` (canonical tags)."""
    return f"tm.{source_language}.{target_locale}.{_digest(source_text)}"


def message_key(locale: str, key: str) -> str:
    """The key of a catalogue message (canonical tag, valid message key)."""
    return f"msg.{locale}.{key}"


def parse_key(key: str) -> tuple[str, str, str] | None:
    """("tm", source, target) or ("msg", locale, message key) for a bucket key; None otherwise."""
    kind, _, rest = key.partition(".")
    if kind == "tm":
        source, _, rest = rest.partition(".")
        target, _, digest = rest.partition(".")
        if source and target and digest:
            return kind, source, target
    elif kind == "msg":
        locale, _, message = rest.partition(".")
        if locale and MESSAGE_KEY.fullmatch(message):
            return kind, locale, message
    return None


def _tag(tag: str, what: str) -> str:
    found = canonical(tag)
    if found is None:
        raise ValueError(f"{what} {tag!r} is not a well-formed BCP 47 tag")
    return found


async def store_translation(
    kv: KeyValue, source_locale: str, target_locale: str, source_text: str, target_text: str
) -> int:
    """Add (or replace) a translation-memory entry; return its revision.

    Entries are keyed by the source's language only (``en-GB`` and ``en`` share entries) and by
    the full target tag, so a regional target can have its own translations.

    Raises:
        ValueError: a tag is malformed, or a text empty or longer than 5000 characters.
    """
    source = language_of(_tag(source_locale, "source_locale"))
    target = _tag(target_locale, "target_locale")
    for name, text in (("source_text", source_text), ("target_text", target_text)):
        if not normalise(text) or len(text) > _MAX_TEXT:
            raise ValueError(f"{name} must have 1 to {_MAX_TEXT} characters and a letter or digit")
    entry = StoredTranslation(source, target, source_text, target_text)
    return await kv.put(translation_key(source, target, source_text), entry.encode())


async def store_message(kv: KeyValue, locale: str, key: str, message: str | Mapping[str, str]) -> int:
    """Add (or replace) a catalogue message for one locale; return its revision.

    ``message`` is a template, or templates by CLDR plural category with "other" among them.

    Raises:
        ValueError: the tag or key is malformed, or the forms are not plural categories.
    """
    tag = _tag(locale, "locale")
    if MESSAGE_KEY.fullmatch(key) is None:
        raise ValueError(f"message key {key!r} is not dot-separated lower_snake_case")
    forms = {"other": message} if isinstance(message, str) else dict(message)
    if "other" not in forms or not set(forms) <= set(CATEGORIES):
        raise ValueError(f"forms must be CLDR plural categories including 'other', not {sorted(forms)}")
    return await kv.put(message_key(tag, key), StoredMessage(forms).encode())
