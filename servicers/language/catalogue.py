"""The built-in message catalogue Localize renders: message key -> text, per locale.

A message is a template string, or, when it depends on a number, a mapping from CLDR plural
category ("zero", "one", "two", "few", "many", "other") to template; "other" is required and is
used for any category the mapping lacks. Templates name their values in braces (``{player_name}``;
``{count}`` is the plural count); ``{{`` and ``}}`` stand for literal braces.

Not every locale has every key, on purpose: Localize falls back along the locale chain (``pt-BR``
-> ``pt`` -> ... -> ``en``), so a regional locale lists only what differs from its language.
Entries stored in KV (``store_message``) override these, per locale and key.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["MESSAGES", "Message"]

Message = str | Mapping[str, str]

MESSAGES: dict[str, dict[str, Message]] = {
    "en": {
        "greeting.welcome": "Welcome, {player_name}!",
        "quest.accepted": "Quest accepted: {quest_name}",
        "quest.reward.gold": {"one": "You receive {count} gold coin.", "other": "You receive {count} gold coins."},
        "inventory.items": {"one": "{count} item", "other": "{count} items"},
        "time.days_left": {"one": "{count} day left", "other": "{count} days left"},
        "player.level_up": "{player_name} reached level {level}!",
        "weather.rain": "It is raining in {region}.",
        "settings.user": "User",
        "party.team": "Your team",
    },
    "fr": {
        "greeting.welcome": "Bienvenue, {player_name} !",
        "quest.accepted": "Quête acceptée : {quest_name}",
        "quest.reward.gold": {
            "one": "Vous recevez {count} pièce d'or.",
            "many": "Vous recevez {count} de pièces d'or.",
            "other": "Vous recevez {count} pièces d'or.",
        },
        "inventory.items": {"one": "{count} objet", "many": "{count} d'objets", "other": "{count} objets"},
        "time.days_left": {"one": "{count} jour restant", "other": "{count} jours restants"},
        "player.level_up": "{player_name} a atteint le niveau {level} !",
        "weather.rain": "Il pleut à {region}.",
        "settings.user": "Utilisateur",
    },
    "de": {
        "greeting.welcome": "Willkommen, {player_name}!",
        "quest.accepted": "Aufgabe angenommen: {quest_name}",
        "quest.reward.gold": {"one": "Du erhältst {count} Goldmünze.", "other": "Du erhältst {count} Goldmünzen."},
        "inventory.items": {"one": "{count} Gegenstand", "other": "{count} Gegenstände"},
        "time.days_left": {"one": "noch {count} Tag", "other": "noch {count} Tage"},
        "player.level_up": "{player_name} hat Stufe {level} erreicht!",
        "settings.user": "Benutzer",
    },
    "es": {
        "greeting.welcome": "¡Bienvenido, {player_name}!",
        "quest.accepted": "Misión aceptada: {quest_name}",
        "quest.reward.gold": {
            "one": "Recibes {count} moneda de oro.",
            "many": "Recibes {count} de monedas de oro.",
            "other": "Recibes {count} monedas de oro.",
        },
        "inventory.items": {"one": "{count} objeto", "other": "{count} objetos"},
        "settings.user": "Usuario",
    },
    "pt": {
        "greeting.welcome": "Bem-vindo, {player_name}!",
        "quest.accepted": "Missão aceite: {quest_name}",
        "quest.reward.gold": {"one": "Recebes {count} moeda de ouro.", "other": "Recebes {count} moedas de ouro."},
        "inventory.items": {"one": "{count} objeto", "other": "{count} objetos"},
        "settings.user": "Utilizador",
        "party.team": "A tua equipa",
    },
    "pt-BR": {
        "quest.accepted": "Missão aceita: {quest_name}",
        "quest.reward.gold": {
            "one": "Você recebe {count} moeda de ouro.",
            "other": "Você recebe {count} moedas de ouro.",
        },
        "settings.user": "Usuário",
        "party.team": "Sua equipe",
    },
    "it": {
        "greeting.welcome": "Benvenuto, {player_name}!",
        "quest.accepted": "Missione accettata: {quest_name}",
        "quest.reward.gold": {"one": "Ricevi {count} moneta d'oro.", "other": "Ricevi {count} monete d'oro."},
        "inventory.items": {"one": "{count} oggetto", "other": "{count} oggetti"},
        "settings.user": "Utente",
    },
    "ru": {
        "greeting.welcome": "Добро пожаловать, {player_name}!",
        "quest.accepted": "Задание принято: {quest_name}",
        "quest.reward.gold": {
            "one": "Вы получаете {count} золотую монету.",
            "few": "Вы получаете {count} золотые монеты.",
            "many": "Вы получаете {count} золотых монет.",
            "other": "Вы получаете {count} золотой монеты.",
        },
        "inventory.items": {
            "one": "{count} предмет",
            "few": "{count} предмета",
            "many": "{count} предметов",
            "other": "{count} предмета",
        },
        "time.days_left": {
            "one": "Остался {count} день",
            "few": "Осталось {count} дня",
            "many": "Осталось {count} дней",
            "other": "Осталось {count} дня",
        },
        "settings.user": "Пользователь",
    },
    "pl": {
        "greeting.welcome": "Witaj, {player_name}!",
        "quest.accepted": "Zadanie przyjęte: {quest_name}",
        "quest.reward.gold": {
            "one": "Otrzymujesz {count} złotą monetę.",
            "few": "Otrzymujesz {count} złote monety.",
            "many": "Otrzymujesz {count} złotych monet.",
            "other": "Otrzymujesz {count} złotej monety.",
        },
        "inventory.items": {
            "one": "{count} przedmiot",
            "few": "{count} przedmioty",
            "many": "{count} przedmiotów",
            "other": "{count} przedmiotu",
        },
        "settings.user": "Użytkownik",
    },
}
