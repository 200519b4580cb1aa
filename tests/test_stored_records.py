"""Stored records read the same since their schemas moved from descriptors built at run time to
``.proto`` files (``protos/gaming/<name>/storage/v1/<name>_records.proto``) compiled by codegen.

Every HEX value below was written by the code before that move: its runtime-built message classes,
filled with the VALUES of the same name and serialized (deterministically: maps in key order). The
generated classes must parse those bytes to the same values and write them back byte for byte,
and so must each servicer's own codec. LAYOUT is the field layout the runtime-built descriptors
declared (full names as they were); the generated descriptors must declare the same field names,
numbers, labels and types. No record's type name is stored anywhere (none is packed in an Any),
so only the names moved to the new packages, and auth's ``KeySetRecordRetiredKey`` became
``RetiredKeyRecord``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from gaming.auth.storage.v1 import auth_records_pb2
from gaming.knowledge_base.storage.v1 import knowledge_base_records_pb2
from gaming.language.storage.v1 import language_records_pb2
from gaming.orchestration.storage.v1 import orchestration_records_pb2
from gaming.payment.storage.v1 import payment_records_pb2
from gaming.quest.storage.v1 import quest_records_pb2
from gaming.settings.storage.v1 import settings_records_pb2
from gaming.state_manager.storage.v1 import state_manager_records_pb2
from gaming.world_state.storage.v1 import world_state_records_pb2
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, json_format, message
from google.protobuf.unknown_fields import UnknownFieldSet

from servicers import settings, state_manager
from servicers.auth import records as auth_records
from servicers.knowledge_base._record import StoredDocument
from servicers.language._records import StoredMessage, StoredTranslation
from servicers.orchestration._records import IdempotencyRecord
from servicers.payment import _records as payment_records
from servicers.quest._records import QuestRecord
from servicers.storage import Entry
from servicers.world_state._record import RegionRecord

# -- the values each record was filled with (protobuf JSON field names) ------------------------------

TIME = "2024-05-01T12:00:00.250Z"
AUDIT = {"actor_id": "player-1", "update_time": TIME}

REGION_RECORD = {
    "region": {"region_id": "harbour", "display_name": "The Harbour", "bounds_min": {"x": -10.5, "y": 0.0, "z": -3.0},
               "bounds_max": {"x": 10.5, "y": 20.0, "z": 3.0}, "entity_count": 2, "max_entities": 100,
               "revision": {"value": 7}, "update_time": TIME},
    "entities": [
        {"entity_id": "crate-1", "region_id": "harbour", "kind": "crate", "position": {"x": 1.0, "y": 2.0, "z": 3.0},
         "attributes": [{"key": "colour", "value": "red"}, {"key": "weight", "value": "12"}],
         "revision": {"value": 3}, "create_time": "2024-05-01T11:00:00Z", "update_time": TIME},
        {"entity_id": "npc-7", "region_id": "harbour", "kind": "npc", "position": {"x": -4.0, "y": 0.5, "z": 0.0},
         "revision": {"value": 7}, "create_time": "2024-05-01T11:30:00Z", "update_time": TIME},
    ],
    "history": [
        {"applied_event": {"event_id": "ev-6", "region_id": "harbour",
                           "event": {"move": {"entity_id": "npc-7", "position": {"x": -4.0, "y": 0.5, "z": 0.0}}},
                           "region_revision": {"value": 6}, "audit": AUDIT},
         "entity": {"entity_id": "npc-7", "region_id": "harbour", "kind": "npc", "revision": {"value": 6}}},
        {"applied_event": {"event_id": "ev-7", "region_id": "harbour",
                           "event": {"set_attribute": {"entity_id": "crate-1",
                                                       "attribute": {"key": "colour", "value": "red"}}},
                           "region_revision": {"value": 7}, "audit": AUDIT},
         "entity": {"entity_id": "crate-1", "region_id": "harbour", "kind": "crate", "revision": {"value": 7}}},
    ],
    "history_base": 5,
}

ACCOUNT_RECORD = {"account_id": "acc-42", "username": "olga", "display_name": "Olga",
                  "password_hash": "scrypt$16384$8$1$c2FsdA$aGFzaA", "scopes": ["player", "operator"],
                  "create_time": 1714564800.25, "disabled": True}
SESSION_RECORD = {"session_id": "ses-9", "account_id": "acc-42", "scopes": ["player"],
                  "client_description": "launcher 1.2", "create_time": 1714564800.5,
                  "refresh_expire_time": 1717156800.5, "refresh_generation": 3, "revoke_time": 1714568400.75,
                  "revoke_reason": "logout"}
FAILURES_RECORD = {"count": 4, "last_failure_time": 1714564801.125, "locked_until": 1714564861.125}
KEY_SET_RECORD = {"kid": "k-3", "private_key": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
                  "create_time": 1714564800.0,
                  "retired": [{"kid": "k-1", "public_key": "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=",
                               "valid_until": 1714568400.0},
                              {"kid": "k-2", "public_key": "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=",
                               "valid_until": 1714572000.5}]}
REVOCATION_RECORD = {"session_id": "ses-9", "revoke_time": 1714568400.75}

IDEMPOTENCY_RECORD = {"workflow_id": "1714564800250-0123456789ab",
                      "fingerprint": "3q2+7wABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhs="}

QUEST_RECORD = {
    "quest": {"quest_id": "8285435199749a1b2c3d4e5f6", "player_id": "player-1", "region_id": "harbour",
              "title": "Crates", "description": "Move the crates",
              "objectives": [{"objective_id": "o1", "description": "move", "required_count": 5, "current_count": 2}],
              "giver_npc_id": "npc-7",
              "rewards": [{"money": {"currency_code": "GLD", "amount_minor": 250}},
                          {"item": {"item_id": "rope", "quantity": 2}}, {"experience_points": 40}],
              "status": "QUEST_STATUS_ACTIVE", "difficulty": "DIFFICULTY_HARD", "template_id": "tpl-1",
              "story_id": "story-1", "revision": {"value": 4}, "create_time": "2024-05-01T11:00:00Z",
              "expire_time": "2024-05-08T11:00:00Z", "audit": AUDIT},
    "degraded": ["story-teller", "npc-behavior"],
    "progress": [
        {"key": "p-1", "revision": 3, "status": "QUEST_STATUS_ACTIVE", "counts": [1], "audit": AUDIT,
         "completed": False},
        {"key": "p-2", "revision": 4, "status": "QUEST_STATUS_COMPLETED", "counts": [2, 300], "audit": AUDIT,
         "completed": True},
    ],
    "slot": 3,
}

SETTINGS_RECORD = {
    "settings": {"scope": {"kind": "SCOPE_KIND_PLAYER", "id": "player-1"},
                 "values": {"audio.music_volume": {"double_value": 0.75}, "video.fullscreen": {"bool_value": True},
                            "ui.language": {"string_value": "pt-BR"}, "net.retries": {"int_value": -3},
                            "net.timeout": {"duration_value": "1.500s"}},
                 "audit": AUDIT},
    "changed_keys": ["audio.music_volume", "net.timeout"],
    "removed_keys": ["ui.theme"],
    "previous_revision": 11,
}

STORED_DOCUMENT = {
    "document": {"id": "lore:harbour.1", "collection": "lore", "title": "The Harbour", "body": "",
                 "attributes": [{"key": "era", "value": "first"}, {"key": "author", "value": "olga"}],
                 "create_time": "2024-05-01T11:00:00Z", "update_time": TIME},
    "body_parts": 3,
    "parts_id": "0123456789abcdef0123456789abcdef",
}

TRANSACTION = {"transaction_id": "YWNjLTQy.2", "account_id": "acc-42", "type": "TRANSACTION_TYPE_CHARGE",
               "status": "TRANSACTION_STATUS_COMPLETED", "amount": {"currency_code": "GLD", "amount_minor": 500},
               "balance_after": {"currency_code": "GLD", "amount_minor": 1500}, "description": "rope",
               "original_transaction_id": "YWNjLTQy.1", "refunded_amount": {"currency_code": "GLD", "amount_minor": 0},
               "idempotency_key": "buy-rope-1", "audit": AUDIT}
PAYMENT_ACCOUNT_RECORD = {
    "last_sequence": 2,
    "balances": [{"currency_code": "GLD", "amount_minor": 1500, "last_sequence": 2},
                 {"currency_code": "GEM", "amount_minor": -20, "last_sequence": 1}],
    "recent": [TRANSACTION],
    "keys": [{"key": "buy-rope-1", "fingerprint": "AAECAwQFBgcICQoLDA0ODw==", "sequence": 2, "refunded_after": 125}],
    "refunds": [{"charge_sequence": 2, "refunded_minor": 125}],
}
PAGE_TOKEN = {"query": "AQIDBAUGBwg=", "before_sequence": 17}

TRANSLATION_UNIT = {"source_language": "en", "target_locale": "pt-BR", "source_text": "Welcome, traveller",
                    "target_text": "Bem-vindo, viajante"}
CATALOGUE_MESSAGE = {"forms": {"one": "{n} apple", "other": "{n} apples", "few": "a few apples"}}

STATE_RECORD = {
    "state": {"player_id": "player-1",
              "document": {"level": 12, "name": "Olga", "alive": True, "inventory": ["rope", {"gold": 3}],
                           "pet": None},
              "create_time": "2024-05-01T11:00:00Z", "audit": AUDIT},
    "deleted": True,
    "previous_revision": 9,
}

# -- what the runtime-built classes wrote ------------------------------------------------------------

HEX: dict[str, tuple[str, ...]] = {
    "REGION_RECORD": (
        "0a5c0a07686172626f7572120b54686520486172626f75721a120900000000000025c01900000000000008c0221b0900000000000025"
        "40110000000000003440190000000000000840280230643a020807420b08c0ddc8b1061080e59a77126c0a0763726174652d31120768"
        "6172626f75721a056372617465221b09000000000000f03f1100000000000000401900000000000008402a0d0a06636f6c6f75721203"
        "7265642a0c0a0677656967687412023132320208033a0608b0c1c8b106420b08c0ddc8b1061080e59a7712420a056e70632d37120768"
        "6172626f75721a036e706322120900000000000010c011000000000000e03f320208073a0608b8cfc8b106420b08c0ddc8b1061080e5"
        "9a771a680a4b0a0465762d361207686172626f75721a1d121b0a056e70632d3712120900000000000010c011000000000000e03f2202"
        "08062a170a08706c617965722d31120b08c0ddc8b1061080e59a7712190a056e70632d371207686172626f75721a036e706332020806"
        "1a690a480a0465762d371207686172626f75721a1a22180a0763726174652d31120d0a06636f6c6f75721203726564220208072a170a"
        "08706c617965722d31120b08c0ddc8b1061080e59a77121d0a0763726174652d311207686172626f75721a0563726174653202080720"
        "05"
    ),
    "ACCOUNT_RECORD": (
        "0a066163632d343212046f6c67611a044f6c6761221e7363727970742431363338342438243124633246736441246147467a61412a06"
        "706c617965722a086f70657261746f7231000010b08b8cd9413801"
    ),
    "SESSION_RECORD": (
        "0a057365732d3912066163632d34321a06706c61796572220c6c61756e6368657220312e3229000020b08b8cd94131000020f06e96d9"
        "41380341000030348f8cd9414a066c6f676f7574"
    ),
    "FAILURES_RECORD": ("080411000048b08b8cd94119000048bf8b8cd941",),
    "KEY_SET_RECORD": (
        "0a036b2d331220000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f19000000b08b8cd94122300a036b2d"
        "311220202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f19000000348f8cd94122300a036b2d32122040"
        "4142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f19000020b8928cd941"
    ),
    "REVOCATION_RECORD": ("0a057365732d3911000030348f8cd941",),
    "IDEMPOTENCY_RECORD": (
        "0a1a313731343536343830303235302d3031323334353637383961621220deadbeef000102030405060708090a0b0c0d0e0f10111213"
        "1415161718191a1b"
    ),
    "QUEST_RECORD": (
        "0abc010a19383238353433353139393734396131623263336434653566361208706c617965722d311a07686172626f75722206437261"
        "7465732a0f4d6f76652074686520637261746573320e0a026f3112046d6f7665180520023a056e70632d37420a0a080a03474c4410fa"
        "01420a12080a04726f7065100242021828480250035a0574706c2d31620773746f72792d316a020804720608b0c1c8b1067a0608b0b6"
        "edb1068201170a08706c617965722d31120b08c0ddc8b1061080e59a77120c73746f72792d74656c6c6572120c6e70632d6265686176"
        "696f721a250a03702d31100318022201012a170a08706c617965722d31120b08c0ddc8b1061080e59a771a290a03702d321004180322"
        "0302ac022a170a08706c617965722d31120b08c0ddc8b1061080e59a7730012003"
    ),
    "SETTINGS_RECORD": (
        "0aaf010a0c08011208706c617965722d31121f0a12617564696f2e6d757369635f766f6c756d65120919000000000000e83f121a0a0b"
        "6e65742e72657472696573120b10fdffffffffffffffff0112190a0b6e65742e74696d656f7574120a2a0808011080cab5ee0112160a"
        "0b75692e6c616e677561676512070a0570742d425212160a10766964656f2e66756c6c73637265656e1202200122170a08706c617965"
        "722d31120b08c0ddc8b1061080e59a771212617564696f2e6d757369635f766f6c756d65120b6e65742e74696d656f75741a0875692e"
        "7468656d65200b"
    ),
    "STORED_DOCUMENT": (
        "0a560a0e6c6f72653a686172626f75722e3112046c6f72651a0b54686520486172626f75722a0c0a03657261120566697273742a0e0a"
        "06617574686f7212046f6c67613a0608b0c1c8b106420b08c0ddc8b1061080e59a7710031a2030313233343536373839616263646566"
        "30313233343536373839616263646566"
    ),
    "PAYMENT_ACCOUNT_RECORD": (
        "0802120a0a03474c4410dc0b180212120a0347454d10ecffffffffffffffff0118011a6a0a0a59574e6a4c5451792e3212066163632d"
        "3432180220012a080a03474c4410f40332080a03474c4410dc0b3a04726f7065420a59574e6a4c5451792e314a050a03474c44520a62"
        "75792d726f70652d315a170a08706c617965722d31120b08c0ddc8b1061080e59a7722220a0a6275792d726f70652d31121000010203"
        "0405060708090a0b0c0d0e0f1802207d2a040802107d"
    ),
    "PAGE_TOKEN": ("0a0801020304050607081011",),
    "TRANSLATION_UNIT": (
        "0a02656e120570742d42521a1257656c636f6d652c2074726176656c6c6572221342656d2d76696e646f2c207669616a616e7465"
    ),
    "CATALOGUE_MESSAGE": (
        "0a130a03666577120c6120666577206170706c65730a100a036f6e6512097b6e7d206170706c650a130a056f74686572120a7b6e7d20"
        "6170706c6573"
    ),
    "STATE_RECORD": (
        "0a99010a08706c617965722d31126c0a0b0a05616c697665120220010a2e0a09696e76656e746f72791221321f0a061a04726f70650a"
        "152a130a110a04676f6c6412091100000000000008400a120a056c6576656c12091100000000000028400a0e0a046e616d6512061a04"
        "4f6c67610a090a0370657412020800220608b0c1c8b1062a170a08706c617965722d31120b08c0ddc8b1061080e59a7710011809"
    ),
}

# -- the field layout the runtime-built descriptors declared --------------------------------------------

LAYOUT: dict[str, list[tuple[str, int, str, str, str]]] = {
    "servicers.world_state.RegionRecord": [  # servicers/world_state/region_record.proto
        ("region", 1, "optional", "TYPE_MESSAGE", "gaming.world_state.v1.Region"),
        ("entities", 2, "repeated", "TYPE_MESSAGE", "gaming.world_state.v1.Entity"),
        ("history", 3, "repeated", "TYPE_MESSAGE", "gaming.world_state.v1.WatchRegionResponse"),
        ("history_base", 4, "optional", "TYPE_UINT64", ""),
    ],
    "gaming.auth.internal.v1.AccountRecord": [  # gaming/auth/internal/v1/accountrecord.proto
        ("account_id", 1, "optional", "TYPE_STRING", ""), ("username", 2, "optional", "TYPE_STRING", ""),
        ("display_name", 3, "optional", "TYPE_STRING", ""), ("password_hash", 4, "optional", "TYPE_STRING", ""),
        ("scopes", 5, "repeated", "TYPE_STRING", ""), ("create_time", 6, "optional", "TYPE_DOUBLE", ""),
        ("disabled", 7, "optional", "TYPE_BOOL", ""),
    ],
    "gaming.auth.internal.v1.SessionRecord": [  # gaming/auth/internal/v1/sessionrecord.proto
        ("session_id", 1, "optional", "TYPE_STRING", ""), ("account_id", 2, "optional", "TYPE_STRING", ""),
        ("scopes", 3, "repeated", "TYPE_STRING", ""), ("client_description", 4, "optional", "TYPE_STRING", ""),
        ("create_time", 5, "optional", "TYPE_DOUBLE", ""), ("refresh_expire_time", 6, "optional", "TYPE_DOUBLE", ""),
        ("refresh_generation", 7, "optional", "TYPE_INT64", ""), ("revoke_time", 8, "optional", "TYPE_DOUBLE", ""),
        ("revoke_reason", 9, "optional", "TYPE_STRING", ""),
    ],
    "gaming.auth.internal.v1.FailuresRecord": [  # gaming/auth/internal/v1/failuresrecord.proto
        ("count", 1, "optional", "TYPE_INT64", ""), ("last_failure_time", 2, "optional", "TYPE_DOUBLE", ""),
        ("locked_until", 3, "optional", "TYPE_DOUBLE", ""),
    ],
    "gaming.auth.internal.v1.KeySetRecord": [  # gaming/auth/internal/v1/keysetrecord.proto
        ("kid", 1, "optional", "TYPE_STRING", ""), ("private_key", 2, "optional", "TYPE_BYTES", ""),
        ("create_time", 3, "optional", "TYPE_DOUBLE", ""),
        ("retired", 4, "repeated", "TYPE_MESSAGE", "gaming.auth.internal.v1.KeySetRecordRetiredKey"),
    ],
    "gaming.auth.internal.v1.KeySetRecordRetiredKey": [  # gaming/auth/internal/v1/keysetrecord.proto
        ("kid", 1, "optional", "TYPE_STRING", ""), ("public_key", 2, "optional", "TYPE_BYTES", ""),
        ("valid_until", 3, "optional", "TYPE_DOUBLE", ""),
    ],
    "gaming.auth.internal.v1.RevocationRecord": [  # gaming/auth/internal/v1/revocationrecord.proto
        ("session_id", 1, "optional", "TYPE_STRING", ""), ("revoke_time", 2, "optional", "TYPE_DOUBLE", ""),
    ],
    "servicers.orchestration.IdempotencyRecord": [  # servicers/orchestration/idempotency_record.proto
        ("workflow_id", 1, "optional", "TYPE_STRING", ""), ("fingerprint", 2, "optional", "TYPE_BYTES", ""),
    ],
    "servicers.quest.QuestRecord": [  # servicers/quest/quest_record.proto
        ("quest", 1, "optional", "TYPE_MESSAGE", "gaming.quest.v1.Quest"),
        ("degraded", 2, "repeated", "TYPE_STRING", ""),
        ("progress", 3, "repeated", "TYPE_MESSAGE", "servicers.quest.ProgressResult"),
        ("slot", 4, "optional", "TYPE_UINT32", ""),
    ],
    "servicers.quest.ProgressResult": [  # servicers/quest/quest_record.proto
        ("key", 1, "optional", "TYPE_STRING", ""), ("revision", 2, "optional", "TYPE_UINT64", ""),
        ("status", 3, "optional", "TYPE_ENUM", "gaming.quest.v1.QuestStatus"),
        ("counts", 4, "repeated", "TYPE_UINT32", ""),
        ("audit", 5, "optional", "TYPE_MESSAGE", "gaming.common.v1.AuditInfo"),
        ("completed", 6, "optional", "TYPE_BOOL", ""),
    ],
    "servicers.settings.SettingsRecord": [  # servicers/settings/settings_record.proto
        ("settings", 1, "optional", "TYPE_MESSAGE", "gaming.settings.v1.Settings"),
        ("changed_keys", 2, "repeated", "TYPE_STRING", ""), ("removed_keys", 3, "repeated", "TYPE_STRING", ""),
        ("previous_revision", 4, "optional", "TYPE_UINT64", ""),
    ],
    "servicers.knowledge_base.StoredDocument": [  # servicers/knowledge_base/stored_document.proto
        ("document", 1, "optional", "TYPE_MESSAGE", "gaming.knowledge_base.v1.Document"),
        ("body_parts", 2, "optional", "TYPE_UINT32", ""), ("parts_id", 3, "optional", "TYPE_STRING", ""),
    ],
    "servicers.payment.records.AccountRecord": [  # servicers/payment/records.proto
        ("last_sequence", 1, "optional", "TYPE_UINT64", ""),
        ("balances", 2, "repeated", "TYPE_MESSAGE", "servicers.payment.records.BalanceRecord"),
        ("recent", 3, "repeated", "TYPE_MESSAGE", "gaming.payment.v1.Transaction"),
        ("keys", 4, "repeated", "TYPE_MESSAGE", "servicers.payment.records.KeyRecord"),
        ("refunds", 5, "repeated", "TYPE_MESSAGE", "servicers.payment.records.RefundRecord"),
    ],
    "servicers.payment.records.BalanceRecord": [  # servicers/payment/records.proto
        ("currency_code", 1, "optional", "TYPE_STRING", ""), ("amount_minor", 2, "optional", "TYPE_INT64", ""),
        ("last_sequence", 3, "optional", "TYPE_UINT64", ""),
    ],
    "servicers.payment.records.KeyRecord": [  # servicers/payment/records.proto
        ("key", 1, "optional", "TYPE_STRING", ""), ("fingerprint", 2, "optional", "TYPE_BYTES", ""),
        ("sequence", 3, "optional", "TYPE_UINT64", ""), ("refunded_after", 4, "optional", "TYPE_INT64", ""),
    ],
    "servicers.payment.records.RefundRecord": [  # servicers/payment/records.proto
        ("charge_sequence", 1, "optional", "TYPE_UINT64", ""), ("refunded_minor", 2, "optional", "TYPE_INT64", ""),
    ],
    "servicers.payment.records.PageToken": [  # servicers/payment/records.proto
        ("query", 1, "optional", "TYPE_BYTES", ""), ("before_sequence", 2, "optional", "TYPE_UINT64", ""),
    ],
    "servicers.language.TranslationUnit": [  # servicers/language/records.proto
        ("source_language", 1, "optional", "TYPE_STRING", ""), ("target_locale", 2, "optional", "TYPE_STRING", ""),
        ("source_text", 3, "optional", "TYPE_STRING", ""), ("target_text", 4, "optional", "TYPE_STRING", ""),
    ],
    "servicers.language.CatalogueMessage": [  # servicers/language/records.proto
        ("forms", 1, "repeated", "TYPE_MESSAGE", "servicers.language.CatalogueMessage.FormsEntry"),
    ],
    "servicers.language.CatalogueMessage.FormsEntry": [  # servicers/language/records.proto
        ("key", 1, "optional", "TYPE_STRING", ""), ("value", 2, "optional", "TYPE_STRING", ""),
    ],
    "servicers.state_manager.StateRecord": [  # servicers/state_manager/state_record.proto
        ("state", 1, "optional", "TYPE_MESSAGE", "gaming.state_manager.v1.PlayerState"),
        ("deleted", 2, "optional", "TYPE_BOOL", ""), ("previous_revision", 3, "optional", "TYPE_UINT64", ""),
    ],
}

# -- the tests ---------------------------------------------------------------------------------------

# Each record: its generated class, and the values it was filled with.
RECORDS: dict[str, tuple[type[message.Message], dict[str, Any]]] = {
    "REGION_RECORD": (world_state_records_pb2.RegionRecord, REGION_RECORD),
    "ACCOUNT_RECORD": (auth_records_pb2.AccountRecord, ACCOUNT_RECORD),
    "SESSION_RECORD": (auth_records_pb2.SessionRecord, SESSION_RECORD),
    "FAILURES_RECORD": (auth_records_pb2.FailuresRecord, FAILURES_RECORD),
    "KEY_SET_RECORD": (auth_records_pb2.KeySetRecord, KEY_SET_RECORD),
    "REVOCATION_RECORD": (auth_records_pb2.RevocationRecord, REVOCATION_RECORD),
    "IDEMPOTENCY_RECORD": (orchestration_records_pb2.IdempotencyRecord, IDEMPOTENCY_RECORD),
    "QUEST_RECORD": (quest_records_pb2.QuestRecord, QUEST_RECORD),
    "SETTINGS_RECORD": (settings_records_pb2.SettingsRecord, SETTINGS_RECORD),
    "STORED_DOCUMENT": (knowledge_base_records_pb2.StoredDocument, STORED_DOCUMENT),
    "PAYMENT_ACCOUNT_RECORD": (payment_records_pb2.AccountRecord, PAYMENT_ACCOUNT_RECORD),
    "PAGE_TOKEN": (payment_records_pb2.PageToken, PAGE_TOKEN),
    "TRANSLATION_UNIT": (language_records_pb2.TranslationUnit, TRANSLATION_UNIT),
    "CATALOGUE_MESSAGE": (language_records_pb2.CatalogueMessage, CATALOGUE_MESSAGE),
    "STATE_RECORD": (state_manager_records_pb2.StateRecord, STATE_RECORD),
}
# Records holding a map somewhere: their plain (non-deterministic) serialization may order map
# entries differently from run to run, so only their deterministic form is compared byte for byte.
WITH_MAPS = {"SETTINGS_RECORD", "CATALOGUE_MESSAGE", "STATE_RECORD"}
# Old package -> new package; auth's one renamed message.
PACKAGES = {
    "servicers.world_state.": "gaming.world_state.storage.v1.",
    "gaming.auth.internal.v1.": "gaming.auth.storage.v1.",
    "servicers.orchestration.": "gaming.orchestration.storage.v1.",
    "servicers.quest.": "gaming.quest.storage.v1.",
    "servicers.settings.": "gaming.settings.storage.v1.",
    "servicers.knowledge_base.": "gaming.knowledge_base.storage.v1.",
    "servicers.payment.records.": "gaming.payment.storage.v1.",
    "servicers.language.": "gaming.language.storage.v1.",
    "servicers.state_manager.": "gaming.state_manager.storage.v1.",
}
RENAMED = {"gaming.auth.storage.v1.KeySetRecordRetiredKey": "gaming.auth.storage.v1.RetiredKeyRecord"}


def old_bytes(name: str) -> bytes:
    return bytes.fromhex("".join(HEX[name]))


def new_name(old: str) -> str:
    """The full name a message of the runtime-built schema has in the generated one."""
    for before, after in PACKAGES.items():
        if old.startswith(before):
            moved = after + old.removeprefix(before)
            return RENAMED.get(moved, moved)
    return old  # a public type (gaming.<name>.v1), which did not move


def test_every_record_and_every_runtime_message_is_covered() -> None:
    assert set(RECORDS) == set(HEX)
    assert {new_name(old) for old in LAYOUT} >= {record.DESCRIPTOR.full_name for record, _ in RECORDS.values()}


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_the_generated_class_reads_the_old_bytes_to_the_same_values(name: str) -> None:
    record_class, values = RECORDS[name]
    parsed = record_class.FromString(old_bytes(name))
    assert parsed == json_format.ParseDict(values, record_class())
    assert len(UnknownFieldSet(parsed)) == 0, "a field of the old bytes is unknown to the new schema"


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_the_generated_class_writes_the_old_bytes_back_byte_for_byte(name: str) -> None:
    record_class, values = RECORDS[name]
    parsed = record_class.FromString(old_bytes(name))
    assert parsed.SerializeToString(deterministic=True) == old_bytes(name)
    assert json_format.ParseDict(values, record_class()).SerializeToString(deterministic=True) == old_bytes(name)
    if name not in WITH_MAPS:
        assert parsed.SerializeToString() == old_bytes(name)


def _row(field: descriptor.FieldDescriptor) -> tuple[str, int, str, str, str]:
    label = "repeated" if field.is_repeated else "optional"
    referenced = field.message_type or field.enum_type
    return (field.name, field.number, label, descriptor_pb2.FieldDescriptorProto.Type.Name(field.type),
            referenced.full_name if referenced else "")


@pytest.mark.parametrize("old", sorted(LAYOUT))
def test_the_generated_schema_declares_the_runtime_field_layout(old: str) -> None:
    generated = descriptor_pool.Default().FindMessageTypeByName(new_name(old))
    wanted = [(name, number, label, kind, new_name(type_name)) for name, number, label, kind, type_name in LAYOUT[old]]
    assert [_row(field) for field in generated.fields] == wanted
    # proto3 without `optional`, as the runtime files were: no presence for scalars (a stored 0
    # and an absent field read the same) and packed repeated numbers.
    source = descriptor_pb2.FileDescriptorProto()
    generated.file.CopyToProto(source)
    assert source.syntax == "proto3"
    for field in generated.fields:
        assert field.has_presence == (field.message_type is not None and not field.is_repeated), field.name


# Each servicer's codec: stored bytes -> its own types -> stored bytes.
CODECS: dict[str, Callable[[bytes], bytes]] = {
    "REGION_RECORD": lambda data: RegionRecord.decode(data).encode(),
    "ACCOUNT_RECORD": lambda data: auth_records.ACCOUNTS.encode(auth_records.ACCOUNTS.decode(data)),
    "SESSION_RECORD": lambda data: auth_records.SESSIONS.encode(auth_records.SESSIONS.decode(data)),
    "FAILURES_RECORD": lambda data: auth_records.FAILURES.encode(auth_records.FAILURES.decode(data)),
    "KEY_SET_RECORD": lambda data: auth_records.KEY_SETS.encode(auth_records.KEY_SETS.decode(data)),
    "REVOCATION_RECORD": lambda data: auth_records.REVOCATIONS.encode(auth_records.REVOCATIONS.decode(data)),
    "IDEMPOTENCY_RECORD": lambda data: IdempotencyRecord.decode(data).encode(),
    "QUEST_RECORD": lambda data: QuestRecord.decode(data).encode(),
    "STORED_DOCUMENT": lambda data: StoredDocument.decode(data).encode(),
    "PAYMENT_ACCOUNT_RECORD": lambda data: payment_records.Account.decode(data).encode(),
    "TRANSLATION_UNIT": lambda data: StoredTranslation.decode(data).encode(),
    "CATALOGUE_MESSAGE": lambda data: StoredMessage.decode(data).encode(),
    "STATE_RECORD": lambda data: (lambda state, deleted, previous: state_manager._encode(
        state, deleted=deleted, previous_revision=previous))(*state_manager._decode(data)),
}


@pytest.mark.parametrize("name", sorted(CODECS))
def test_each_servicer_codec_keeps_every_field_of_the_old_bytes(name: str) -> None:
    # A field the codec dropped on the way in would be missing on the way out.
    record_class, _ = RECORDS[name]
    again = CODECS[name](old_bytes(name))
    assert record_class.FromString(again) == record_class.FromString(old_bytes(name))
    if name not in WITH_MAPS:
        assert again == old_bytes(name)


def test_the_settings_codec_reads_the_old_bytes_and_writes_what_it_read() -> None:
    # settings' decode stamps the entry's revision on the settings, so it is checked by hand.
    stored, changed, removed, previous = settings._decode(Entry("player.cGxheWVyLTE", old_bytes("SETTINGS_RECORD"), 12))
    assert (stored.revision.value, changed, removed, previous) == (
        12, ["audio.music_volume", "net.timeout"], ["ui.theme"], 11)
    assert stored.values["net.timeout"].duration_value.ToMilliseconds() == 1500
    stored.ClearField("revision")
    again = settings_records_pb2.SettingsRecord.FromString(settings._encode(stored, changed, removed, previous))
    assert again.SerializeToString(deterministic=True) == old_bytes("SETTINGS_RECORD")


def test_auth_records_decode_to_the_dataclasses_they_were() -> None:
    account = auth_records.ACCOUNTS.decode(old_bytes("ACCOUNT_RECORD"))
    assert account == auth_records.Account(
        account_id="acc-42", username="olga", display_name="Olga", password_hash="scrypt$16384$8$1$c2FsdA$aGFzaA",
        scopes=("player", "operator"), create_time=1714564800.25, disabled=True)
    key_set = auth_records.KEY_SETS.decode(old_bytes("KEY_SET_RECORD"))
    assert key_set.private_key == bytes(range(32))
    assert [(key.kid, key.public_key, key.valid_until) for key in key_set.retired] == [
        ("k-1", bytes(range(32, 64)), 1714568400.0), ("k-2", bytes(range(64, 96)), 1714572000.5)]
    assert auth_records.SESSIONS.decode(old_bytes("SESSION_RECORD")).refresh_generation == 3
    assert auth_records.FAILURES.decode(old_bytes("FAILURES_RECORD")).count == 4


def test_a_page_token_handed_out_before_still_parses_and_is_issued_the_same() -> None:
    # Page tokens are PageToken bytes in base64url, held by clients across the change.
    token = "CggBAgMEBQYHCBAR"
    assert base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)) == old_bytes("PAGE_TOKEN")
    assert payment_records.parse_page_token(token) == (bytes(range(1, 9)), 17)
    assert payment_records.page_token(bytes(range(1, 9)), 17) == token


def test_region_and_quest_records_decode_to_what_was_stored() -> None:
    region = RegionRecord.decode(old_bytes("REGION_RECORD"))
    assert (region.revision, sorted(region.entities), region.history_base) == (7, ["crate-1", "npc-7"], 5)
    assert region.find_event("ev-7") is not None
    quest = QuestRecord.decode(old_bytes("QUEST_RECORD"))
    assert (quest.degraded, quest.slot, [result.key for result in quest.progress]) == (
        ["story-teller", "npc-behavior"], 3, ["p-1", "p-2"])
    assert (quest.progress[1].counts, quest.progress[1].completed) == ((2, 300), True)
