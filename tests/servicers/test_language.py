"""language-system over NATS: translation (exact, fuzzy, parent-locale, phrase-by-phrase and no
match; detected sources), detection by n-gram profiles, localisation with fallback chains, CLDR
plurals and arguments, the KV overlay followed by every replica, restarts and outages."""

from __future__ import annotations

import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import nats
import pytest
from gaming.common.v1 import common_pb2
from gaming.language.v1 import language_pb2 as lang
from gaming.language.v1 import language_pb2_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.aio.client import Client

from mesh.jetstream_storage import JetStreamStorage
from nats_transport.testing import NatsServer
from servicers import language
from servicers.dependencies import Dependencies
from servicers.language._locales import canonical, chain, lineage
from servicers.language._messages import render
from servicers.language._plurals import plural_category
from servicers.language._text import normalise, similarity, with_shape_of
from servicers.storage import KeyValue
from tests._buckets import delete_buckets
from tests._serving import served
from tests._waiting import wait_for
from tests.servicers._faulty_storage import FaultyStorage


def no_channel(target: str) -> Any:
    raise AssertionError(f"language-system calls no other service (asked for {target!r})")


@contextlib.asynccontextmanager
async def languages(nc: Client, storage: Any) -> AsyncIterator[Any]:
    """A stub to a freshly created language servicer, stopped (and unsubscribed) after."""
    servicer = await language.create(Dependencies(storage=storage, channel=no_channel))
    try:
        async with served(nc, language.add_to_server, servicer) as channel:
            yield language_pb2_grpc.LanguageServiceStub(channel)
    finally:
        await servicer.aclose()


@pytest.fixture
async def stub(nc: Client, storage: JetStreamStorage) -> AsyncIterator[Any]:
    async with languages(nc, storage) as stub:
        yield stub


@pytest.fixture
async def bucket(storage: JetStreamStorage) -> KeyValue:
    return await storage.key_value(language.BUCKET)


def tag(value: str) -> common_pb2.LocaleTag:
    return common_pb2.LocaleTag(tag=value)


async def translate(stub: Any, text: str, target: str, source: str | None = None) -> lang.TranslateResponse:
    request = lang.TranslateRequest(text=text, target_locale=tag(target))
    if source is not None:
        request.source_locale.tag = source
    reply: lang.TranslateResponse = await stub.Translate(request, timeout=5)
    return reply


async def localize(stub: Any, key: str, locale: str, *fallbacks: str, count: int | None = None,
                   **arguments: str) -> lang.LocalizeResponse:
    request = lang.LocalizeRequest(
        message_key=key, locale=tag(locale), fallback_locales=[tag(f) for f in fallbacks], arguments=arguments
    )
    if count is not None:
        request.plural_count = count
    reply: lang.LocalizeResponse = await stub.Localize(request, timeout=5)
    return reply


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def bad_field(err: grpc.aio.AioRpcError) -> str:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    status = rpc_status.from_call(err)
    assert status is not None
    request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(request)
    return str(request.field_violations[0].field)


# -- pure parts: tags, plurals, similarity, templates -----------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("en", "en"), ("PT-br", "pt-BR"), ("zh-hant-tw", "zh-Hant-TW"), ("es-419", "es-419"),
        ("de-CH-1996", "de-CH-1996"), ("pt_BR", None), ("e", None), ("english", None), ("en-", None),
        ("en-x-private", None), ("", None), ("en-US" + "-abcdefgh" * 4, None),
    ],
)
def test_locale_tags_are_canonicalised_or_refused(raw: str, expected: str | None) -> None:
    assert canonical(raw) == expected


def test_locale_chains_try_parents_then_fallbacks_then_english_without_repeats() -> None:
    assert lineage("zh-Hant-TW") == ["zh-Hant-TW", "zh-Hant", "zh"]
    assert chain("pt-BR") == ["pt-BR", "pt", "en"]
    assert chain("fr-CA", ["pt-BR", "fr", "en-GB"]) == ["fr-CA", "fr", "pt-BR", "pt", "en-GB", "en"]


@pytest.mark.parametrize(
    ("locale", "counts", "expected"),
    [
        ("en", [0, 1, 2, -1, 21], ["other", "one", "other", "one", "other"]),
        ("de-AT", [1, 2], ["one", "other"]),
        ("fr", [0, 1, 2, 1_000_000, 2_000_000, 1_000_001], ["one", "one", "other", "many", "many", "other"]),
        ("pt-BR", [0, 1, 2], ["one", "one", "other"]),
        ("pt-PT", [0, 1, 2, 1_000_000], ["other", "one", "other", "many"]),
        ("es", [0, 1, 2, 1_000_000], ["other", "one", "other", "many"]),
        ("it", [1, 11], ["one", "other"]),
        ("ru", [1, 2, 4, 5, 11, 12, 14, 21, 22, 25, 101, 111, 112, 0],
         ["one", "few", "few", "many", "many", "many", "many", "one", "few", "many", "one", "many", "many", "many"]),
        ("pl", [0, 1, 2, 4, 5, 12, 21, 22, 25, 102, 112],
         ["many", "one", "few", "few", "many", "many", "many", "few", "many", "few", "many"]),
        ("cs", [1, 3, 5], ["one", "few", "other"]),
        ("ar", [0, 1, 2, 3, 10, 11, 99, 100, 102, 103],
         ["zero", "one", "two", "few", "few", "many", "many", "other", "other", "few"]),
        ("cy", [0, 1, 2, 3, 6, 7], ["zero", "one", "two", "few", "many", "other"]),
        ("ja", [0, 1, 2], ["other", "other", "other"]),
        ("xx", [1], ["other"]),
    ],
)
def test_plural_categories_follow_cldr(locale: str, counts: list[int], expected: list[str]) -> None:
    assert [plural_category(locale, count) for count in counts] == expected


def levenshtein(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def test_similarity_is_one_minus_the_normalised_edit_distance_when_above_the_minimum() -> None:
    assert similarity("thank you very much", "thank you very much", 0.75) == 1.0
    assert similarity("thank yu very much", "thank you very much", 0.75) == pytest.approx(1 - 1 / 19)
    assert similarity("kitten", "sitting", 0.75) == 0.0  # 3 edits in 7: 0.57
    assert similarity("kitten", "sitting", 0.5) == pytest.approx(1 - 3 / 7)
    generator = random.Random(7)
    for _ in range(300):
        a = "".join(generator.choice("abc ") for _ in range(generator.randint(0, 12)))
        b = "".join(generator.choice("abc ") for _ in range(generator.randint(0, 12)))
        exact = 1 - levenshtein(a, b) / max(len(a), len(b), 1)
        expected = exact if exact >= 0.6 else 0.0
        assert similarity(a, b, 0.6) == pytest.approx(expected), (a, b)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("  Where is the Inn?! ", "where is the inn"), ("STRASSE", "strasse"), ("Straße", "strasse"),
     ("ﬁre—and ice", "fire and ice"), ("l'épée", "l épée"), ("snake_case", "snake case")],
)
def test_normalisation_folds_case_width_and_punctuation(text: str, expected: str) -> None:
    assert normalise(text) == expected


@pytest.mark.parametrize(
    ("source", "translation", "expected"),
    [("Hello!", "bonjour", "Bonjour!"), ("hello", "Bonjour", "Bonjour"), ("sword", "Schwert", "Schwert"),
     ("Where is the inn?", "¿dónde está la posada?", "¿Dónde está la posada?"), ("Yes...", "oui", "Oui.")],
)
def test_translations_take_the_sources_capital_and_terminal_punctuation(
    source: str, translation: str, expected: str
) -> None:
    assert with_shape_of(source, translation) == expected


@pytest.mark.parametrize(
    ("template", "values", "expected", "missing"),
    [
        ("Welcome, {player_name}!", {"player_name": "Ada"}, "Welcome, Ada!", []),
        ("{a} and {b} and {a}", {}, "{a} and {b} and {a}", ["a", "b"]),
        ("{{literal}} {x}", {"x": "1"}, "{literal} 1", []),
        ("{Not_A_Name} { x }", {"x": "1"}, "{Not_A_Name} { x }", []),
        ("{v}", {"v": "{w}"}, "{w}", []),
    ],
)
def test_templates_fill_named_placeholders(
    template: str, values: dict[str, str], expected: str, missing: list[str]
) -> None:
    assert render(template, values) == (expected, missing)


# -- Translate ----------------------------------------------------------------------------------------


async def test_a_phrasebook_entry_translates_exactly_keeping_the_texts_shape(stub: Any) -> None:
    reply = await translate(stub, "Thank you!", "fr", source="en")
    assert (reply.translated_text, reply.match_kind, reply.confidence) == ("Merci!", lang.MATCH_KIND_EXACT, 1.0)
    assert (reply.source_locale.tag, reply.source_detected, reply.target_locale_used.tag) == ("en", False, "fr")
    spanish = await translate(stub, "Where is the inn?", "es", source="en-US")
    assert spanish.translated_text == "¿Dónde está la posada?"
    assert spanish.source_locale.tag == "en-US"


async def test_a_near_miss_matches_fuzzily_with_its_similarity_as_confidence(stub: Any) -> None:
    reply = await translate(stub, "Thank yu very much", "de", source="en")
    assert (reply.translated_text, reply.match_kind) == ("Vielen Dank", lang.MATCH_KIND_FUZZY)
    assert reply.confidence == pytest.approx(1 - 1 / 19)


async def test_a_stored_entry_overrides_the_phrasebook_on_every_replica(
    nc: Client, storage: JetStreamStorage, bucket: KeyValue
) -> None:
    async with languages(nc, storage) as first, languages(nc, storage) as second:
        await language.store_translation(bucket, "en", "fr", "Thank you!", "Merci infiniment")
        for replica in (first, second):
            async def overridden(replica: Any = replica) -> bool:
                return (await translate(replica, "thank you", "fr", source="en")).translated_text == "Merci infiniment"

            await wait_for(overridden)


async def test_a_regional_target_falls_back_to_its_language_unless_it_has_its_own_entry(
    stub: Any, bucket: KeyValue
) -> None:
    reply = await translate(stub, "Thank you", "pt-BR", source="en")
    assert (reply.translated_text, reply.match_kind, reply.target_locale_used.tag) == (
        "Obrigado", lang.MATCH_KIND_FALLBACK, "pt")
    assert reply.confidence == pytest.approx(0.9)
    await language.store_translation(bucket, "en", "pt-br", "thank you", "valeu")

    async def regional() -> bool:
        reply = await translate(stub, "Thank you", "pt-BR", source="en")
        return (reply.translated_text, reply.match_kind, reply.target_locale_used.tag) == (
            "Valeu", lang.MATCH_KIND_EXACT, "pt-BR")

    await wait_for(regional)


async def test_longer_texts_are_translated_phrase_by_phrase(stub: Any) -> None:
    reply = await translate(stub, "Hello, where is the inn? I am lost.", "it", source="en")
    assert reply.translated_text == "Ciao, dov'è la locanda? Mi sono perso."
    assert (reply.match_kind, reply.target_locale_used.tag) == (lang.MATCH_KIND_FALLBACK, "it")
    assert reply.confidence == pytest.approx(0.6)
    partly = await translate(stub, "Good luck, brave knight", "fr", source="en")
    assert partly.translated_text == "Bonne chance, brave knight"
    assert partly.confidence == pytest.approx(0.6 * 2 / 4)


async def test_untranslatable_text_comes_back_unchanged_with_match_kind_none(stub: Any) -> None:
    for text in ("Zorblax quuxifies the frobnitz", "Thank you for all the fish, Zorblax"):
        reply = await translate(stub, text, "de", source="en")
        assert (reply.translated_text, reply.match_kind, reply.confidence) == (text, lang.MATCH_KIND_NONE, 0.0)
        assert not reply.HasField("target_locale_used")


async def test_a_text_already_in_the_target_language_is_its_own_translation(stub: Any) -> None:
    reply = await translate(stub, "Colour me impressed", "en-GB", source="en")
    assert (reply.translated_text, reply.match_kind, reply.target_locale_used.tag) == (
        "Colour me impressed", lang.MATCH_KIND_FALLBACK, "en")


async def test_the_source_language_is_detected_when_not_given(stub: Any, bucket: KeyValue) -> None:
    text = "Le forgeron répare les épées et les armures près du port."
    await language.store_translation(bucket, "fr", "en", text, "The blacksmith mends swords and armour by the port.")

    async def detected() -> bool:
        reply = await translate(stub, text, "en")
        return reply.match_kind == lang.MATCH_KIND_EXACT

    await wait_for(detected)
    reply = await translate(stub, text, "en")
    assert (reply.source_locale.tag, reply.source_detected) == ("fr", True)
    assert reply.translated_text == "The blacksmith mends swords and armour by the port."


async def test_a_short_text_of_uncertain_language_is_looked_up_in_every_language(stub: Any) -> None:
    detection = await stub.Detect(lang.DetectRequest(text="merci beaucoup"), timeout=5)
    assert not detection.reliable
    reply = await translate(stub, "merci beaucoup", "en")
    assert (reply.translated_text, reply.match_kind) == ("thank you very much", lang.MATCH_KIND_EXACT)
    assert (reply.source_locale.tag, reply.source_detected) == ("fr", True)
    unknown = await translate(stub, "xq zzv", "en")
    assert unknown.match_kind == lang.MATCH_KIND_NONE
    assert (unknown.HasField("source_locale"), unknown.source_detected) == (False, False)


async def test_a_language_with_stored_entries_becomes_supported(stub: Any, bucket: KeyValue) -> None:
    assert bad_field(await failure(translate(stub, "thank you", "ja", source="en"))) == "target_locale.tag"
    await language.store_translation(bucket, "en", "ja", "thank you", "ありがとう")

    async def supported() -> bool:
        try:
            return (await translate(stub, "thank you", "ja", source="en")).translated_text == "ありがとう"
        except grpc.aio.AioRpcError:
            return False

    await wait_for(supported)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"text": "", "target_locale": tag("fr")}, "text"),
        ({"text": "   ", "target_locale": tag("fr")}, "text"),
        ({"text": "a" * 5001, "target_locale": tag("fr")}, "text"),
        ({"text": "hello"}, "target_locale.tag"),
        ({"text": "hello", "target_locale": tag("pt_BR")}, "target_locale.tag"),
        ({"text": "hello", "target_locale": tag("xx")}, "target_locale.tag"),
        ({"text": "hello", "target_locale": tag("fr"), "source_locale": tag("e")}, "source_locale.tag"),
        ({"text": "hello", "target_locale": tag("fr"), "source_locale": tag("tlh")}, "source_locale.tag"),
    ],
)
async def test_invalid_translations_are_rejected_naming_the_field(
    stub: Any, fields: dict[str, Any], field: str
) -> None:
    assert bad_field(await failure(stub.Translate(lang.TranslateRequest(**fields), timeout=5))) == field


# -- Detect ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The blacksmith in the harbour town repairs swords and armour for a fair price.", "en"),
        ("Le forgeron de la ville portuaire répare les épées et les armures pour un prix honnête.", "fr"),
        ("Der Schmied in der Hafenstadt repariert Schwerter und Rüstungen zu einem fairen Preis.", "de"),
        ("El herrero de la ciudad portuaria repara espadas y armaduras por un precio justo.", "es"),
        ("O ferreiro da cidade portuária repara espadas e armaduras por um preço justo.", "pt"),
        ("Il fabbro della città portuale ripara spade e armature a un prezzo onesto.", "it"),
        ("De smid in de havenstad repareert zwaarden en harnassen voor een eerlijke prijs.", "nl"),
        ("Kowal w mieście portowym naprawia miecze i zbroje za uczciwą cenę.", "pl"),
        ("Кузнец в портовом городе чинит мечи и доспехи за честную цену.", "ru"),
        ("Onde posso comprar um escudo melhor?", "pt"),
        ("¿Dónde puedo comprar un escudo mejor?", "es"),
    ],
)
async def test_detect_names_the_language_of_texts_it_never_saw(stub: Any, text: str, expected: str) -> None:
    reply = await stub.Detect(lang.DetectRequest(text=text), timeout=5)
    assert reply.candidates[0].language.tag == expected
    assert reply.reliable


async def test_detect_scores_are_ranked_and_sum_to_one_over_all_languages(stub: Any) -> None:
    reply = await stub.Detect(lang.DetectRequest(text="Where can I buy a better shield?", max_candidates=10), timeout=5)
    scores = [candidate.score for candidate in reply.candidates]
    assert len(scores) == 9  # every supported language
    assert sum(scores) == pytest.approx(1.0)
    assert scores == sorted(scores, reverse=True)
    assert all(0 <= score <= 1 for score in scores)
    default = await stub.Detect(lang.DetectRequest(text="Where can I buy a better shield?"), timeout=5)
    assert len(default.candidates) == 3


async def test_detect_is_unreliable_on_texts_without_evidence(stub: Any) -> None:
    digits = await stub.Detect(lang.DetectRequest(text="12345 !!!", max_candidates=10), timeout=5)
    assert not digits.reliable
    assert [candidate.score for candidate in digits.candidates] == [pytest.approx(1 / 9)] * 9
    short = await stub.Detect(lang.DetectRequest(text="ok"), timeout=5)
    assert not short.reliable


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"text": ""}, "text"), ({"text": "x" * 5001}, "text"), ({"text": "hello", "max_candidates": 11},
     "max_candidates"), ({"text": "hello", "max_candidates": -1}, "max_candidates")],
)
async def test_invalid_detections_are_rejected_naming_the_field(stub: Any, fields: dict[str, Any], field: str) -> None:
    assert bad_field(await failure(stub.Detect(lang.DetectRequest(**fields), timeout=5))) == field


# -- Localize ----------------------------------------------------------------------------------------


async def test_a_message_is_rendered_with_its_arguments(stub: Any) -> None:
    reply = await localize(stub, "greeting.welcome", "fr", player_name="Ada")
    assert (reply.text, reply.locale_used.tag, reply.fallback_used) == ("Bienvenue, Ada !", "fr", False)
    assert (reply.plural_category, list(reply.missing_arguments)) == (lang.PLURAL_CATEGORY_UNSPECIFIED, [])


async def test_placeholders_without_arguments_are_left_in_place_and_listed(stub: Any) -> None:
    reply = await localize(stub, "player.level_up", "en", player_name="Ada")
    assert reply.text == "Ada reached level {level}!"
    assert list(reply.missing_arguments) == ["level"]


@pytest.mark.parametrize(
    ("key", "locale", "fallbacks", "text", "used", "fell_back"),
    [
        ("settings.user", "pt-BR", [], "Usuário", "pt-BR", False),
        ("settings.user", "pt-PT", [], "Utilizador", "pt", True),
        ("party.team", "pt-br", [], "Sua equipe", "pt-BR", False),
        ("greeting.welcome", "pt-BR", [], "Bem-vindo, Ada!", "pt", True),
        ("weather.rain", "de-AT", [], "It is raining in Nordmark.", "en", True),
        ("settings.user", "ja", ["fr-CA", "de"], "Utilisateur", "fr", True),
        ("weather.rain", "ja", ["fr-CA", "de"], "Il pleut à Nordmark.", "fr", True),
        ("party.team", "es", ["it"], "Your team", "en", True),
    ],
)
async def test_the_locale_chain_is_tried_in_order(
    stub: Any, key: str, locale: str, fallbacks: list[str], text: str, used: str, fell_back: bool
) -> None:
    reply = await localize(stub, key, locale, *fallbacks, player_name="Ada", region="Nordmark")
    assert (reply.text, reply.locale_used.tag, reply.fallback_used) == (text, used, fell_back)


@pytest.mark.parametrize(
    ("locale", "count", "text", "category"),
    [
        ("en", 1, "You receive 1 gold coin.", lang.PLURAL_CATEGORY_ONE),
        ("en", 0, "You receive 0 gold coins.", lang.PLURAL_CATEGORY_OTHER),
        ("fr", 0, "Vous recevez 0 pièce d'or.", lang.PLURAL_CATEGORY_ONE),
        ("fr", 1_000_000, "Vous recevez 1000000 de pièces d'or.", lang.PLURAL_CATEGORY_MANY),
        ("ru", 21, "Вы получаете 21 золотую монету.", lang.PLURAL_CATEGORY_ONE),
        ("ru", 3, "Вы получаете 3 золотые монеты.", lang.PLURAL_CATEGORY_FEW),
        ("ru", 11, "Вы получаете 11 золотых монет.", lang.PLURAL_CATEGORY_MANY),
        ("pl", 22, "Otrzymujesz 22 złote monety.", lang.PLURAL_CATEGORY_FEW),
        ("pl", 12, "Otrzymujesz 12 złotych monet.", lang.PLURAL_CATEGORY_MANY),
        ("pt-BR", 0, "Você recebe 0 moeda de ouro.", lang.PLURAL_CATEGORY_ONE),
        # German has no "many": the category is reported, the "other" form used.
        ("de", 1_000_000, "Du erhältst 1000000 Goldmünzen.", lang.PLURAL_CATEGORY_OTHER),
        ("es", 1_000_000, "Recibes 1000000 de monedas de oro.", lang.PLURAL_CATEGORY_MANY),
        ("it", 1_000_000, "Ricevi 1000000 monete d'oro.", lang.PLURAL_CATEGORY_MANY),
    ],
)
async def test_plural_forms_follow_the_cldr_rules_of_the_locale_used(
    stub: Any, locale: str, count: int, text: str, category: int
) -> None:
    reply = await localize(stub, "quest.reward.gold", locale, count=count)
    assert (reply.text, reply.plural_category) == (text, category)


async def test_a_plural_message_without_a_count_uses_its_other_form(stub: Any) -> None:
    reply = await localize(stub, "inventory.items", "en")
    assert (reply.text, reply.plural_category, list(reply.missing_arguments)) == (
        "{count} items", lang.PLURAL_CATEGORY_UNSPECIFIED, ["count"])


async def test_a_stored_message_overrides_the_catalogue_until_deleted(stub: Any, bucket: KeyValue) -> None:
    await language.store_message(bucket, "en", "greeting.welcome", "Hail, {player_name}!")
    swiss = {"one": "{count} Goldstück", "other": "{count} Goldstücke"}
    await language.store_message(bucket, "de-CH", "quest.reward.gold", swiss)

    async def text(key: str, locale: str, count: int | None = None) -> str:
        return (await localize(stub, key, locale, count=count, player_name="Ada")).text

    async def overridden() -> bool:
        english = await text("greeting.welcome", "en")
        swiss = await text("quest.reward.gold", "de-CH", 3)
        return (english, swiss) == ("Hail, Ada!", "3 Goldstücke")

    await wait_for(overridden)
    await bucket.delete("msg.en.greeting.welcome")

    async def restored() -> bool:
        return await text("greeting.welcome", "en") == "Welcome, Ada!"

    await wait_for(restored)


async def test_a_key_no_locale_has_is_not_found(stub: Any) -> None:
    err = await failure(localize(stub, "quest.unknown_key", "fr", "de"))
    assert err.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"message_key": "Quest.Reward", "locale": tag("en")}, "message_key"),
        ({"message_key": "quest..reward", "locale": tag("en")}, "message_key"),
        ({"message_key": "", "locale": tag("en")}, "message_key"),
        ({"message_key": "k" * 257, "locale": tag("en")}, "message_key"),
        ({"message_key": "greeting.welcome"}, "locale.tag"),
        ({"message_key": "greeting.welcome", "locale": tag("en_US")}, "locale.tag"),
        ({"message_key": "greeting.welcome", "locale": tag("en"), "fallback_locales": [tag("fr"), tag("f r")]},
         "fallback_locales[1].tag"),
        ({"message_key": "greeting.welcome", "locale": tag("en"), "fallback_locales": [tag("fr")] * 9},
         "fallback_locales"),
        ({"message_key": "greeting.welcome", "locale": tag("en"), "arguments": {"PlayerName": "x"}}, "arguments"),
        ({"message_key": "greeting.welcome", "locale": tag("en"), "arguments": {"name": "x" * 1025}}, "arguments"),
        ({"message_key": "greeting.welcome", "locale": tag("en"), "arguments": {f"a{n}": "x" for n in range(33)}},
         "arguments"),
    ],
)
async def test_invalid_localizations_are_rejected_naming_the_field(
    stub: Any, fields: dict[str, Any], field: str
) -> None:
    assert bad_field(await failure(stub.Localize(lang.LocalizeRequest(**fields), timeout=5))) == field


async def test_the_store_helpers_refuse_malformed_entries(bucket: KeyValue) -> None:
    with pytest.raises(ValueError, match="BCP 47"):
        await language.store_translation(bucket, "en_US", "fr", "a", "b")
    with pytest.raises(ValueError, match="source_text"):
        await language.store_translation(bucket, "en", "fr", "?!", "b")
    with pytest.raises(ValueError, match="lower_snake_case"):
        await language.store_message(bucket, "en", "Bad.Key", "x")
    with pytest.raises(ValueError, match="other"):
        await language.store_message(bucket, "en", "good.key", {"one": "x"})


# -- restarts and outages ------------------------------------------------------------------------------


async def test_a_restart_keeps_stored_translations_and_messages(nats_server: NatsServer) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    connection = await nats.connect(nats_server.url)
    try:
        storage = JetStreamStorage(connection, prefix=prefix)
        async with languages(connection, storage):
            bucket = await storage.key_value(language.BUCKET)
            await language.store_translation(bucket, "en", "de", "The portal is open", "Das Portal ist offen")
            await language.store_message(bucket, "de", "portal.open", "Das Portal nach {place} ist offen")
    finally:
        await connection.close()

    connection = await nats.connect(nats_server.url)
    try:
        async with languages(connection, JetStreamStorage(connection, prefix=prefix)) as stub:
            reply = await translate(stub, "The portal is open.", "de", source="en")
            assert (reply.translated_text, reply.match_kind) == ("Das Portal ist offen.", lang.MATCH_KIND_EXACT)
            message = await localize(stub, "portal.open", "de-AT", place="Nordmark")
            assert (message.text, message.locale_used.tag) == ("Das Portal nach Nordmark ist offen", "de")
    finally:
        await delete_buckets(connection, prefix)  # give the reserved space back
        await connection.close()


async def test_while_the_store_is_down_lookups_are_unavailable_and_detection_still_works(
    nc: Client, storage: JetStreamStorage
) -> None:
    faulty = FaultyStorage(storage)
    async with languages(nc, faulty) as stub:
        bucket = await storage.key_value(language.BUCKET)
        faulty.fail()

        async def unavailable() -> bool:
            try:
                await translate(stub, "Thank you", "fr", source="en")
            except grpc.aio.AioRpcError as err:
                return bool(err.code() == grpc.StatusCode.UNAVAILABLE)
            return False

        await wait_for(unavailable)  # the replica notices when its watch fails
        for call in (translate(stub, "Thank you", "fr", source="en"), localize(stub, "greeting.welcome", "en")):
            err = await failure(call)
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            assert "language-system" in (err.details() or "")
        detection = await stub.Detect(lang.DetectRequest(text="Where can I buy a better shield?"), timeout=5)
        assert detection.candidates[0].language.tag == "en"
        # Written while this replica could not see the store: found once it is back.
        await language.store_translation(bucket, "en", "fr", "the portal", "le portail")
        faulty.restore()

        async def recovered() -> bool:
            try:
                return (await translate(stub, "the portal", "fr", source="en")).translated_text == "le portail"
            except grpc.aio.AioRpcError:
                return False

        await wait_for(recovered)


async def test_values_written_by_hand_that_are_not_entries_are_ignored(stub: Any, bucket: KeyValue) -> None:
    await bucket.put("tm.en.fr.junk", b"\xff\xff not an entry")
    await bucket.put("msg.en.greeting.welcome", b"\xff\xff not a message")
    await language.store_message(bucket, "en", "portal.open", "The portal is open")

    async def caught_up() -> bool:
        try:
            return (await localize(stub, "portal.open", "en")).text == "The portal is open"
        except grpc.aio.AioRpcError:
            return False

    await wait_for(caught_up)
    assert (await localize(stub, "greeting.welcome", "en", player_name="Ada")).text == "Welcome, Ada!"
    assert (await translate(stub, "Thank you", "fr", source="en")).translated_text == "Merci"
