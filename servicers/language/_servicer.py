"""LanguageService: Translate and Localize answer from memory (the built-in phrasebook and
catalogue, under what the KV bucket holds, followed by a watch); Detect needs no storage."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import grpc
from gaming.common.v1 import common_pb2
from gaming.language.v1 import language_pb2, language_pb2_grpc
from google.protobuf import message as protobuf_message

from servicers.errors import invalid_argument, not_found, unavailable
from servicers.kv_mirror import KvMirror
from servicers.language import _detection, phrasebook
from servicers.language._locales import canonical, chain, language_of
from servicers.language._memory import TranslationMemory
from servicers.language._messages import Catalogue, render
from servicers.language._plurals import plural_category
from servicers.language._records import MESSAGE_KEY, StoredMessage, StoredTranslation, parse_key
from servicers.storage import Change, KeyValue

__all__ = ["LanguageServicer"]

_log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 5000
DEFAULT_CANDIDATES = 3
MAX_CANDIDATES = 10
MAX_FALLBACKS = 8
MAX_ARGUMENTS = 32
MAX_ARGUMENT_CHARS = 1024
_ARGUMENT_NAME = re.compile(r"[a-z][a-z0-9_]*")

_PLURAL_CATEGORIES = {
    "zero": language_pb2.PLURAL_CATEGORY_ZERO,
    "one": language_pb2.PLURAL_CATEGORY_ONE,
    "two": language_pb2.PLURAL_CATEGORY_TWO,
    "few": language_pb2.PLURAL_CATEGORY_FEW,
    "many": language_pb2.PLURAL_CATEGORY_MANY,
    "other": language_pb2.PLURAL_CATEGORY_OTHER,
}


class LanguageServicer(language_pb2_grpc.LanguageServiceServicer):
    """Translation memory, language detection and localisation.

    The translation memory and the catalogue are built-in data (``phrasebook``, ``catalogue``)
    overlaid by entries in one KV bucket (written with ``store_translation`` and
    ``store_message``). Every replica keeps the overlay in memory, current through a watch on the
    bucket (see ``kv_mirror``): fuzzy matching scans the memory, which per-call KV reads could
    not do cheaply. While the overlay is being (re)built, Translate and Localize answer
    UNAVAILABLE rather than from a partial view.
    """

    def __init__(self, bucket: KeyValue, memory: TranslationMemory, catalogue: Catalogue) -> None:
        self._memory = memory
        self._catalogue = catalogue
        self._mirror = KvMirror(bucket, self._apply, self._reset, name="language-system")

    def __repr__(self) -> str:
        return f"<LanguageServicer {self._memory!r} {self._catalogue!r} overlay={self._mirror!r}>"

    async def start(self) -> None:
        """Read the bucket and follow it (raises MirrorUnavailable on failure)."""
        await self._mirror.start()

    async def aclose(self) -> None:
        """Stop following the bucket."""
        await self._mirror.aclose()

    def _reset(self) -> None:
        self._memory.clear_stored()
        self._catalogue.clear_stored()

    async def _apply(self, change: Change) -> None:
        parsed = parse_key(change.key)
        if parsed is None:
            return  # the mirror's sync key, or a key this service does not own
        kind, locale, message_key = parsed
        try:
            if kind == "tm":
                if change.value is None:
                    self._memory.remove(change.key)
                else:
                    self._memory.put(change.key, StoredTranslation.decode(change.value))
            elif change.value is None:
                self._catalogue.remove(locale, message_key)
            else:
                self._catalogue.put(locale, message_key, StoredMessage.decode(change.value).forms)
        except (protobuf_message.DecodeError, ValueError):
            # Someone wrote the bucket by hand: skip that value rather than stop following.
            _log.warning("language-system: %s holds no valid entry; ignored", change.key, exc_info=True)

    async def Translate(
        self,
        request: language_pb2.TranslateRequest,
        context: grpc.aio.ServicerContext[language_pb2.TranslateRequest, language_pb2.TranslateResponse],
    ) -> language_pb2.TranslateResponse:
        """Translate from the memory, in the order ``_memory`` documents; detect the source
        language when it is not given."""
        _check_text(request.text)
        if not request.target_locale.tag:
            raise invalid_argument("target_locale.tag", "is required")
        target = _tag(request.target_locale.tag, "target_locale.tag")
        given = None
        if request.source_locale.tag:  # an empty tag is as good as unset: detect
            given = _tag(request.source_locale.tag, "source_locale.tag")
        self._available()
        for tag, field in ((target, "target_locale.tag"), (given, "source_locale.tag")):
            if tag is not None:
                self._check_supported(tag, field)
        if given is not None:
            sources, known = [language_of(given)], True
        else:
            detection = _detection.detect(request.text)
            if detection.reliable:
                sources, known = [detection.best], True
            else:
                # Try every language, best-detected first: a match in the memory names the source.
                ranked = [language for language, _ in detection.candidates]
                sources = ranked + sorted(self._memory.languages() - set(ranked))
                known = False
        found = self._memory.translate(request.text, sources, target, source_known=known)
        response = language_pb2.TranslateResponse(
            translated_text=found.text, match_kind=found.match_kind, confidence=found.confidence
        )
        if given is not None:
            response.source_locale.tag = given
        elif found.source_language is not None:
            response.source_locale.tag = found.source_language
            response.source_detected = True
        if found.target_locale is not None:
            response.target_locale_used.tag = found.target_locale
        return response

    async def Detect(
        self,
        request: language_pb2.DetectRequest,
        context: grpc.aio.ServicerContext[language_pb2.DetectRequest, language_pb2.DetectResponse],
    ) -> language_pb2.DetectResponse:
        """Rank the supported languages by their n-gram profiles' fit to the text."""
        _check_text(request.text)
        if not 0 <= request.max_candidates <= MAX_CANDIDATES:
            raise invalid_argument("max_candidates", f"must be 1 to {MAX_CANDIDATES} (0 means {DEFAULT_CANDIDATES})")
        detection = _detection.detect(request.text)
        wanted = request.max_candidates or DEFAULT_CANDIDATES
        return language_pb2.DetectResponse(
            candidates=[
                language_pb2.LanguageCandidate(language=common_pb2.LocaleTag(tag=language), score=score)
                for language, score in detection.candidates[:wanted]
            ],
            reliable=detection.reliable,
        )

    async def Localize(
        self,
        request: language_pb2.LocalizeRequest,
        context: grpc.aio.ServicerContext[language_pb2.LocalizeRequest, language_pb2.LocalizeResponse],
    ) -> language_pb2.LocalizeResponse:
        """Render the message from the first locale of the chain that has it."""
        if MESSAGE_KEY.fullmatch(request.message_key) is None:
            raise invalid_argument("message_key", "must be dot-separated lower_snake_case, at most 256 characters")
        if not request.locale.tag:
            raise invalid_argument("locale.tag", "is required")
        locale = _tag(request.locale.tag, "locale.tag")
        if len(request.fallback_locales) > MAX_FALLBACKS:
            raise invalid_argument("fallback_locales", f"at most {MAX_FALLBACKS} allowed")
        fallbacks = [
            _tag(fallback.tag, f"fallback_locales[{index}].tag")
            for index, fallback in enumerate(request.fallback_locales)
        ]
        _check_arguments(request.arguments)
        self._available()
        for candidate in chain(locale, fallbacks):
            forms = self._catalogue.find(candidate, request.message_key)
            if forms is not None:
                break
        else:
            raise not_found(f"no locale in the chain of {locale!r} has message {request.message_key!r}",
                            "MESSAGE_NOT_FOUND")
        values = dict(request.arguments)
        category = None
        if request.HasField("plural_count"):
            category = plural_category(candidate, request.plural_count)
            values["count"] = str(request.plural_count)
        text, missing = render(forms.get(category or "other") or forms["other"], values)
        return language_pb2.LocalizeResponse(
            text=text,
            locale_used=common_pb2.LocaleTag(tag=candidate),
            fallback_used=candidate != locale,
            plural_category=_PLURAL_CATEGORIES[category] if category else language_pb2.PLURAL_CATEGORY_UNSPECIFIED,
            missing_arguments=missing,
        )

    def _available(self) -> None:
        if not self._mirror.ready:
            raise unavailable("language-system: the translation memory and catalogue are being reloaded",
                              "STORE_UNAVAILABLE")

    def _check_supported(self, tag: str, field: str) -> None:
        supported = set(_detection.LANGUAGES) | set(phrasebook.LANGUAGES) | self._memory.languages()
        if language_of(tag) not in supported:
            raise invalid_argument(field, f"language {language_of(tag)!r} is not supported "
                                   f"(supported: {', '.join(sorted(supported))})")


def _tag(tag: str, field: str) -> str:
    found = canonical(tag)
    if found is None:
        raise invalid_argument(field, f"{tag!r} is not a well-formed BCP 47 tag (e.g. 'pt-BR')")
    return found


def _check_text(text: str) -> None:
    if not text.strip():
        raise invalid_argument("text", "is required")
    if len(text) > MAX_TEXT_CHARS:
        raise invalid_argument("text", f"must be at most {MAX_TEXT_CHARS} characters")


def _check_arguments(arguments: Mapping[str, str]) -> None:
    if len(arguments) > MAX_ARGUMENTS:
        raise invalid_argument("arguments", f"at most {MAX_ARGUMENTS} allowed")
    for name, value in arguments.items():
        if _ARGUMENT_NAME.fullmatch(name) is None:
            raise invalid_argument("arguments", f"key {name!r} is not lower_snake_case")
        if len(value) > MAX_ARGUMENT_CHARS:
            raise invalid_argument("arguments", f"value of {name!r} is longer than {MAX_ARGUMENT_CHARS} characters")
