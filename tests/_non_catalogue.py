"""Services of ``protos/gaming`` that the service catalogue leaves out on purpose, each with why.

Tests that walk every service of the protos (targets, generated modules, the ``buf build``
descriptor set) hold the catalogue's services to the catalogue, and accept these, listed by name,
and no others: a new service joins the catalogue (``mesh/catalogue.py``) or this list, with a
reason.
"""

from __future__ import annotations

NON_CATALOGUE: dict[str, str] = {
    "gaming.conformance.v1.ConformanceService": (
        "the test service of docs/conformance.md: `mesh conformance` hosts it for clients in other "
        "languages to check themselves against; no mesh host serves it and nothing of the mesh calls it"
    ),
}

# Their packages' short names, as in gaming/<name>/v1/<name>.proto.
NON_CATALOGUE_PACKAGES = frozenset(name.split(".")[1] for name in NON_CATALOGUE)
