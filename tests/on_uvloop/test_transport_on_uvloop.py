"""The transport on uvloop: hosts run on it wherever it is installed (``mesh/event_loop.py``), so
the unary, streaming, cancellation and call-object tests run here again on a uvloop loop.

The tests are imported from their modules, so pytest collects them a second time in this
folder, whose conftest gives every async test a uvloop loop.
"""

from __future__ import annotations

import asyncio

from tests.test_call_parity import *  # noqa: F403
from tests.test_streams import *  # noqa: F403
from tests.test_unary_calls import *  # noqa: F403
from tests.test_unary_cancel import *  # noqa: F403


async def test_these_tests_run_on_uvloop() -> None:
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
