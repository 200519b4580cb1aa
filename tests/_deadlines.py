"""A deadline for calls that must end before it, checked without timing the call."""

from __future__ import annotations

# pytest-timeout ends every test after 120 s ([tool.pytest.ini_options] timeout in pyproject.toml;
# tests/test_unary_calls.py checks the order). A call given this deadline that waits for it
# fails its test as a timeout instead of passing late; one that fails before it ends with its own
# status, never DEADLINE_EXCEEDED. So a test asserts the status and the cause, not how long it took.
BEYOND_THE_TEST_TIMEOUT = 600.0
