"""Reading the settings the host hands a servicer (``Dependencies.settings``, from
``MESH_<SERVICE>_<NAME>`` in the environment): one parser, so every service refuses a bad value
the same way, when it starts rather than on some later call."""

from __future__ import annotations

from collections.abc import Mapping


def positive_int(settings: Mapping[str, str], name: str, default: int, *, service: str = "") -> int:
    """The setting ``name`` as a positive integer, or ``default`` when it is not set.

    Raises:
        ValueError: the value is not a positive integer; the message names the setting (and
            ``service``, when given, as in ``payment setting cas_attempts='x' is not an integer``).
    """
    text = settings.get(name)
    if text is None:
        return default
    where = f"{service} setting {name}={text!r}" if service else f"{name}={text!r}"
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{where} is not an integer") from None
    if value < 1:
        raise ValueError(f"{where} must be positive")
    return value


def bucket_max_bytes(settings: Mapping[str, str], default: int) -> int:
    """The ``bucket_max_bytes`` setting, or ``default``. JetStream reserves a bucket's max_bytes
    up front, so tests and small hosts that open many buckets need a smaller figure than
    production."""
    return positive_int(settings, "bucket_max_bytes", default)
