"""The YAML emitter: whatever a manifest holds reads back as the same data in a YAML reader,
including strings YAML would otherwise take for numbers, booleans, nulls or syntax."""

from __future__ import annotations

import yaml

from mesh.k8s.emit import document, documents

TRICKY = ["true", "False", "on", "OFF", "yes", "n", "null", "~", "", "8080", "0440", "1e3", "0.0.0.0", "1.30",
          "a: b", "#x", "x #y", "- x", "-x", "--admin-port", "*", "&a", "!t", "|", ">", "%p", "@x", "`x`", "x y",
          "[a]", "{a}", "a,b", "it's", 'say "hi"', "tab\there", "line\nbreak", "naïve", "/healthz?js-enabled-only=true"]


def test_tricky_strings_read_back_as_the_same_strings_as_values_keys_and_list_items() -> None:
    data = {
        "values": {f"k{i}": text for i, text in enumerate(TRICKY)},
        "keys": {text: i for i, text in enumerate(TRICKY)},
        "flow": TRICKY[:6],
        "block": TRICKY,
        "items": [{"name": text, "nested": {"list": [text], "empty": {}, "none": []}} for text in TRICKY],
        "scalars": [0, -1, True, False, None],
    }
    assert yaml.safe_load(document(data)) == data


def test_documents_are_separated_and_read_back_in_order() -> None:
    items = [{"kind": "A", "n": 1}, {"kind": "B", "list": [{"a": 1}, {"b": [2, 3]}]}]
    assert list(yaml.safe_load_all(documents(items))) == items
