"""How a mesh process reaches NATS and who it is there: URLs, TLS, credentials, inbox prefix.

Every command (``mesh serve``, ``mesh call``, ``mesh services``, ``mesh up``'s ingress) connects
through :func:`connect`, so each gets the same watchdog settings, the same poison guard and the
same one-line errors when its credentials are refused.

An *identity folder* is what ``mesh security init`` writes for one identity
(``<data-dir>/secrets/<name>/``): ``ca.pem``, ``cert.pem``, ``key.pem`` (mTLS to NATS),
``nkey.seed`` (the NATS user) and ``identity.json`` (its name and inbox prefix).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from nats_transport import WATCHDOG_CONNECT_OPTIONS, guard_connection

IDENTITY_FILES = ("ca.pem", "cert.pem", "key.pem", "nkey.seed")


def _not_tls_eof_noise(record: logging.LogRecord) -> bool:
    # nats-py's TLS transport makes asyncio log this once per TLS connection; it says nothing
    # an operator can act on.
    return "eof_received() has no effect when using ssl" not in record.getMessage()


logging.getLogger("asyncio").addFilter(_not_tls_eof_noise)


class NatsUnreachable(ConnectionError):
    """No NATS server could be reached in the time given; the message says where and why."""


class AccessDenied(Exception):
    """NATS refused who we are (bad credentials, a certificate it does not trust, no permission
    to connect). Retrying will not help: the message is one line for the operator."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsAccess:
    """Where NATS is and how to prove who we are.

    Attributes:
        urls: NATS servers (several for a cluster).
        tls_ca: CA file that signed the server's certificate (TLS).
        tls_cert, tls_key: our client certificate and key (mTLS).
        creds: a NATS ``.creds`` file (JWT + seed, decentralised auth).
        nkey_seed: a file holding an nkey user seed.
        user, password, token: other NATS credentials.
        inbox_prefix: the connection's inbox prefix (``_INBOX_<identity>`` under permissions).
    """

    urls: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    creds: Path | None = None
    nkey_seed: Path | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    inbox_prefix: str | None = None

    def __repr__(self) -> str:  # never show secrets
        return f"<NatsAccess urls={list(self.urls)} tls={self.tls} identity={self.inbox_prefix!r}>"

    @property
    def tls(self) -> bool:
        """True when the connection uses TLS."""
        return bool(self.tls_ca or self.tls_cert) or any(u.startswith(("tls://", "wss://")) for u in self.urls)

    def as_identity(self, folder: Path) -> NatsAccess:
        """This access with the credentials of an identity folder (see the module docstring).

        Raises:
            ValueError: the folder lacks a file an identity needs.
        """
        missing = [name for name in IDENTITY_FILES if not (folder / name).is_file()]
        if missing:
            raise ValueError(f"{folder} is not an identity folder (missing {', '.join(missing)}); "
                             "create one with 'mesh security init'")
        prefix = f"_INBOX_{folder.name}"
        described = folder / "identity.json"
        if described.is_file():
            prefix = str(json.loads(described.read_text()).get("inbox_prefix", prefix))
        return replace(self, tls_ca=folder / "ca.pem", tls_cert=folder / "cert.pem", tls_key=folder / "key.pem",
                       nkey_seed=folder / "nkey.seed", creds=None, user=None, password=None, token=None,
                       inbox_prefix=prefix)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context, or None without TLS settings."""
        if not (self.tls_ca or self.tls_cert):
            return None
        context = ssl.create_default_context(cafile=str(self.tls_ca) if self.tls_ca else None)
        if self.tls_cert and self.tls_key:
            context.load_cert_chain(str(self.tls_cert), str(self.tls_key))
        return context

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``."""
        options: dict[str, Any] = {"servers": list(self.urls)}
        context = self.ssl_context()
        if context is not None:
            options["tls"] = context
        if self.creds:
            options["user_credentials"] = str(self.creds)
        if self.nkey_seed:
            options["nkeys_seed"] = str(self.nkey_seed)
        if self.user:
            options["user"], options["password"] = self.user, self.password or ""
        if self.token:
            options["token"] = self.token
        if self.inbox_prefix:
            options["inbox_prefix"] = self.inbox_prefix
        return options


ErrorCallback = Callable[[Exception], Awaitable[None]]

# How long a failure of a first connection waits for a refusal that may follow it (seconds).
_REFUSAL_GRACE = 0.3


async def connect(access: NatsAccess, *, name: str, error_cb: ErrorCallback | None = None,
                  give_up_after: float | None = None, **options: Any) -> Client:
    """A connected, guarded client with the watchdog's PING settings.

    ``options`` go to ``nats.connect`` (reconnect settings, callbacks). nats-py keeps trying a
    first connection that fails; ``give_up_after`` bounds that (seconds), for commands that
    should end rather than wait for NATS to appear.

    Raises:
        AccessDenied: the server refused our credentials or certificate.
        NatsUnreachable: no server answered within ``give_up_after`` seconds (or, with
            ``give_up_after``, nats-py's own ``connect_timeout`` ran out first).
        OSError, nats.errors.NoServersError, TimeoutError: the server could not be reached.
    """
    if give_up_after is None:
        return await _connect(access, name, error_cb, options)
    failures: list[Exception] = []

    async def remember(exc: Exception) -> None:
        failures.append(exc)
        if error_cb is not None:
            await error_cb(exc)

    where = ", ".join(access.urls)
    try:
        async with asyncio.timeout(give_up_after) as bound:
            return await _connect(access, name, remember, options)
    except TimeoutError as exc:
        if not bound.expired():
            # nats-py's own connect_timeout ran out first (a first attempt without reconnects,
            # to a port where nothing answers as NATS): not our bound, so not "within N s".
            raise NatsUnreachable(f"cannot reach NATS at {where}: {_describe(exc)}") from None
        last = f": {_describe(failures[-1])}" if failures else ""
        raise NatsUnreachable(f"cannot reach NATS at {where} within {give_up_after:g} s{last}") from None


def _describe(exc: BaseException) -> str:
    """A failure to reach NATS as an operator reads it (never a bare class name)."""
    if isinstance(exc, TimeoutError):
        # nats-py waits connect_timeout for the TCP connection and each step of the handshake,
        # and says only that it timed out.
        return "nothing answered as a NATS server in time (is that a NATS client port?)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


async def _connect(access: NatsAccess, name: str, error_cb: ErrorCallback | None, options: dict[str, Any]) -> Client:
    # nats-py retries a refused first connection forever when reconnects are unlimited, handing
    # each failure to error_cb: a refusal (bad credentials, an untrusted certificate) is final,
    # so it ends the attempt here instead of looping silently.
    loop = asyncio.get_running_loop()
    # Done once the attempt is settled (refused, connected, failed or given up on).
    refused: asyncio.Future[str] = loop.create_future()
    delivering: set[asyncio.Future[None]] = set()

    def deliver_unless_settled(exc: Exception) -> None:
        if error_cb is not None and not refused.done():
            task = asyncio.ensure_future(error_cb(exc))
            delivering.add(task)
            task.add_done_callback(delivering.discard)

    async def on_error(exc: Exception) -> None:
        reason = _refusal(exc)
        if reason is not None:
            if not refused.done():
                refused.set_result(reason)
            return
        if error_cb is None:
            return
        if attempt.done() or not isinstance(exc, ConnectionResetError | BrokenPipeError):
            await error_cb(exc)
            return
        # A server that refuses us sends -ERR and closes: the reset sometimes reaches us first.
        # A reset of a first connection is held briefly, so a refusal right behind it reports
        # only itself.
        loop.call_later(_REFUSAL_GRACE, deliver_unless_settled, exc)

    attempt = asyncio.ensure_future(nats.connect(**access.connect_options(), name=name, error_cb=on_error,
                                                 **{**WATCHDOG_CONNECT_OPTIONS, **options}))
    waiters: set[asyncio.Future[Any]] = {attempt, refused}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        # Given up on (a bound, SIGTERM): nats-py's retry loop must not live on unseen.
        refused.cancel()
        attempt.cancel()
        with contextlib.suppress(BaseException):
            await attempt
        raise
    if not attempt.done():
        attempt.cancel()
        with contextlib.suppress(BaseException):
            await attempt
        raise AccessDenied(refused.result())
    refusal = refused.result() if refused.done() else None
    refused.cancel()
    try:
        nc = attempt.result()
    except Exception as exc:
        reason = _refusal(exc) or refusal
        if reason is not None:
            raise AccessDenied(reason) from None
        raise
    return guard_connection(nc)


# X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH: the certificate is trusted
# but names other hosts, so --tls-ca is not what needs fixing.
_NAME_MISMATCH = (62, 64)
# TLS alerts a server sends when it does not accept our client certificate (or its absence).
_CLIENT_CERT_ALERTS = ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_REQUIRED", "CERTIFICATE_UNKNOWN")


def _refusal(exc: BaseException) -> str | None:
    """A one-line reason if ``exc`` says the server refused who we are, else None."""
    if isinstance(exc, ssl.SSLError):
        return f"TLS with NATS failed: {_tls_failure(exc)}"
    text = str(exc)
    if _is_refusal(text):
        return f"NATS refused the credentials: {text}"
    return None


def _is_refusal(text: str) -> bool:
    lowered = text.lower()
    return any(word in lowered for word in ("authorization violation", "authentication", "certificate",
                                            "tls required", "permissions violation for connect"))


def _tls_failure(exc: ssl.SSLError) -> str:
    """What went wrong in a TLS handshake, naming the setting that fixes it."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in _NAME_MISMATCH:
            return f"{exc.verify_message.rstrip('.')}: use a --nats-url host that the server's certificate names"
        # The usual case: no --tls-ca, so the system's CAs, which did not sign a mesh's certificate.
        return (f"the server's certificate is not trusted ({exc.verify_message}): "
                "give the CA that signed it with --tls-ca")
    reason = exc.reason or str(exc)
    if any(alert in reason for alert in _CLIENT_CERT_ALERTS):
        return f"the server did not accept our client certificate ({reason}): check --tls-cert and --tls-key"
    return reason
