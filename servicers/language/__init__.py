"""language-system: translation from a translation memory, language detection, and localisation
of message keys with locale fallback chains, CLDR plural forms and named arguments.

Built-in data ships as Python modules: ``phrasebook`` (short game phrases in six languages, the
base of the translation memory), ``samples`` (the texts Detect's n-gram profiles are built from)
and ``catalogue`` (the messages Localize renders). One JetStream KV bucket overlays the
phrasebook and the catalogue: ``store_translation`` and ``store_message`` write it (the API has
no call for that; operators and tools do), and every replica follows it with a watch, so an
entry stored anywhere is used everywhere, and a restart keeps it.

Where each behaviour is specified: the lookup order and confidences of Translate in ``_memory``,
normalisation and similarity in ``_text``, detection in ``_detection``, locale tags and chains
in ``_locales``, plural rules in ``_plurals``, the bucket's keys and values in ``_records``.

Settings (``deps.settings``):
    max_bytes: size limit of the bucket in bytes (default 64 MiB).
"""

from __future__ import annotations

from gaming.language.v1 import language_pb2_grpc

from servicers.dependencies import Dependencies
from servicers.language._memory import TranslationMemory
from servicers.language._messages import Catalogue
from servicers.language._records import store_message, store_translation
from servicers.language._servicer import LanguageServicer
from servicers.language.catalogue import MESSAGES
from servicers.language.phrasebook import PHRASES

__all__ = [
    "BUCKET",
    "SERVICE_NAMES",
    "TARGET",
    "LanguageServicer",
    "add_to_server",
    "create",
    "store_message",
    "store_translation",
]

TARGET = "language-system"
SERVICE_NAMES = ("gaming.language.v1.LanguageService",)
add_to_server = language_pb2_grpc.add_LanguageServiceServicer_to_server

BUCKET = "language_overlay"
# Only the latest translation or message per key is ever read.
BUCKET_HISTORY = 1
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


async def create(deps: Dependencies) -> LanguageServicer:
    """Open the overlay bucket, load it over the built-in data, and return a ready servicer (call
    its ``aclose()`` to stop following the bucket).

    Raises:
        ValueError: a setting is malformed.
        servicers.kv_mirror.MirrorUnavailable: the bucket could not be read (storage unreachable).
    """
    text = deps.settings.get("max_bytes", str(DEFAULT_MAX_BYTES))
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"language-system max_bytes must be a positive integer, not {text!r}")
    bucket = await deps.storage.key_value(BUCKET, history=BUCKET_HISTORY, max_bytes=int(text))
    servicer = LanguageServicer(bucket, TranslationMemory.from_phrasebook(PHRASES), Catalogue(MESSAGES))
    await servicer.start()
    return servicer
