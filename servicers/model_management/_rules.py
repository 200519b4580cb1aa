"""What a valid model description is, and how it is keyed in the store."""

from __future__ import annotations

import base64
import binascii
import re

from gaming.ai_integration.v1 import ai_integration_pb2
from gaming.model_management.v1 import model_management_pb2 as mm

from servicers.errors import InvalidArgument
from servicers.model_fields import check_duration, check_enum, check_name

MAX_DISPLAY_NAME = 256
MAX_BACKEND_MODEL = 256
MAX_ATTRIBUTES = 32
ATTRIBUTE_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_ATTRIBUTE_VALUE = 256
CURRENCY = re.compile(r"[A-Z]{3,8}")

# The expected latency a model gets when registered without one: the top of its latency class
# (the proto defines REALTIME as under 200 ms and INTERACTIVE as under 2 s; BATCH is open-ended,
# so a minute stands for "seconds or more").
CLASS_CEILING_MS: dict[mm.LatencyClass.ValueType, int] = {
    mm.LATENCY_CLASS_REALTIME: 200,
    mm.LATENCY_CLASS_INTERACTIVE: 2_000,
    mm.LATENCY_CLASS_BATCH: 60_000,
}


def model_key(name: str) -> str:
    """The KV key of a model: its name in base64url without padding.

    Names may contain dots, which KV keys treat as token separators (``a..b`` or a trailing dot
    would be no key at all); base64url never produces a dot.
    """
    return base64.urlsafe_b64encode(name.encode()).rstrip(b"=").decode()


def name_of_key(key: str) -> str:
    """The model name a key holds (``model_key``'s inverse).

    Raises:
        ValueError: not a key this module made.
    """
    try:
        return base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError) as err:
        raise ValueError(f"not a model key: {key!r}") from err


def checked_model(model: mm.Model) -> mm.Model:
    """A copy of ``model`` ready to store: validated, output-only fields cleared, defaults set.

    Defaults: availability AVAILABLE when unset (a model registered without one is taken to be
    up); expected latency the top of its latency class when unset (see ``CLASS_CEILING_MS``).

    Raises:
        InvalidArgument: a field is missing or out of range.
    """
    check_name("model.name", model.name)
    if len(model.display_name) > MAX_DISPLAY_NAME:
        raise InvalidArgument("model.display_name", f"must be at most {MAX_DISPLAY_NAME} characters")
    check_enum("model.backend", model.backend, list(ai_integration_pb2.Backend.values()), allow_unspecified=False)
    if len(model.backend_model) > MAX_BACKEND_MODEL:
        raise InvalidArgument("model.backend_model", f"must be at most {MAX_BACKEND_MODEL} characters")
    if not model.capabilities:
        raise InvalidArgument("model.capabilities", "must list at least one capability")
    known_capabilities = list(mm.Capability.values())
    for index, capability in enumerate(model.capabilities):
        check_enum(f"model.capabilities[{index}]", capability, known_capabilities, allow_unspecified=False)
    if len(set(model.capabilities)) != len(model.capabilities):
        raise InvalidArgument("model.capabilities", "must not repeat a capability")
    if model.context_tokens <= 0:
        raise InvalidArgument("model.context_tokens", "must be greater than 0")
    check_enum("model.latency_class", model.latency_class, list(mm.LatencyClass.values()), allow_unspecified=False)
    if model.HasField("expected_latency"):
        check_duration("model.expected_latency", model.expected_latency)
    cost = model.cost_per_million_tokens
    if cost.amount_minor < 0:
        raise InvalidArgument("model.cost_per_million_tokens.amount_minor", "must not be negative")
    if (cost.currency_code or cost.amount_minor) and not CURRENCY.fullmatch(cost.currency_code):
        raise InvalidArgument("model.cost_per_million_tokens.currency_code",
                              "must be 3 to 8 capital letters (ISO 4217 or an in-game code) when a cost is set")
    check_enum("model.availability", model.availability, list(mm.Availability.values()), allow_unspecified=True)
    if len(model.attributes) > MAX_ATTRIBUTES:
        raise InvalidArgument("model.attributes", f"must hold at most {MAX_ATTRIBUTES} attributes")
    for index, attribute in enumerate(model.attributes):
        if not ATTRIBUTE_KEY.fullmatch(attribute.key):
            raise InvalidArgument(f"model.attributes[{index}].key", "must be lower_snake_case, 1 to 64 characters")
        if len(attribute.value) > MAX_ATTRIBUTE_VALUE:
            raise InvalidArgument(f"model.attributes[{index}].value",
                                  f"must be at most {MAX_ATTRIBUTE_VALUE} characters")

    stored = mm.Model()
    stored.CopyFrom(model)
    for output_only in ("revision", "create_time", "audit"):
        stored.ClearField(output_only)
    if stored.availability == mm.AVAILABILITY_UNSPECIFIED:
        stored.availability = mm.AVAILABILITY_AVAILABLE
    if not stored.HasField("expected_latency"):
        stored.expected_latency.FromMilliseconds(CLASS_CEILING_MS[stored.latency_class])
    return stored
