"""A backend that calls a server speaking the OpenAI-compatible chat API over HTTP.

``POST {base_url}/chat/completions`` with the prompt as one user message (after the system
prompt, if any); ``stream: true`` for streams, read as Server-Sent Events (``data:`` lines, ending
with ``data: [DONE]``). Works with OpenAI and with vLLM, llama.cpp's server, Ollama, LM Studio...

Failures become ``BackendError`` with the code of the usual HTTP <-> gRPC mapping, so the
caller can tell "retry elsewhere" (UNAVAILABLE) from "fix your request" (INVALID_ARGUMENT):

- no connection, reset, malformed answer, 5xx: UNAVAILABLE (the proto: safe to retry on
  another model); 408 and 504, or no answer within the timeout: DEADLINE_EXCEEDED;
- 429: RESOURCE_EXHAUSTED, with the server's Retry-After passed on;
- 401 and 403: PERMISSION_DENIED. The backend refused *this service's* API key: the caller's own
  credentials are fine, so UNAUTHENTICATED (which tells a caller to log in again) would mislead;
- 404: NOT_FOUND (the backend does not serve the model); other 4xx: INVALID_ARGUMENT.

Cancelling a call closes the HTTP connection (see ``_http``), which stops the remote generation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import grpc
from gaming.ai_integration.v1 import ai_integration_pb2

from servicers.ai_integration import _http
from servicers.ai_integration.backends import (
    BackendError,
    BackendKind,
    Completion,
    Finish,
    FinishReason,
    Generation,
    StopScanner,
)

_log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0
"""Seconds to wait for an answer (unary), or for the next event of a stream, when the caller's
deadline does not end sooner."""

_S = grpc.StatusCode
# HTTP status -> (gRPC code, ErrorInfo reason, whether the backend's message may be passed on).
# Messages about the request help the caller; messages about credentials stay in our logs.
HTTP_STATUS_MAP: dict[int, tuple[grpc.StatusCode, str, bool]] = {
    400: (_S.INVALID_ARGUMENT, "BACKEND_REJECTED_REQUEST", True),
    401: (_S.PERMISSION_DENIED, "BACKEND_CREDENTIALS_REJECTED", False),
    403: (_S.PERMISSION_DENIED, "BACKEND_CREDENTIALS_REJECTED", False),
    404: (_S.NOT_FOUND, "BACKEND_MODEL_NOT_FOUND", True),
    408: (_S.DEADLINE_EXCEEDED, "BACKEND_TIMEOUT", False),
    413: (_S.INVALID_ARGUMENT, "BACKEND_REJECTED_REQUEST", True),
    422: (_S.INVALID_ARGUMENT, "BACKEND_REJECTED_REQUEST", True),
    429: (_S.RESOURCE_EXHAUSTED, "BACKEND_RATE_LIMITED", False),
    504: (_S.DEADLINE_EXCEEDED, "BACKEND_TIMEOUT", False),
}
_OTHER_4XX = (_S.INVALID_ARGUMENT, "BACKEND_REJECTED_REQUEST", True)
_OTHER = (_S.UNAVAILABLE, "BACKEND_FAILED", False)

FINISH_REASONS: dict[str, FinishReason] = {
    "stop": ai_integration_pb2.FINISH_REASON_STOP,
    "length": ai_integration_pb2.FINISH_REASON_LENGTH,
    "content_filter": ai_integration_pb2.FINISH_REASON_CONTENT_FILTER,
    # A tool call ends the turn as a stop does; we ask for none, but servers may still say so.
    "tool_calls": ai_integration_pb2.FINISH_REASON_STOP,
    "function_call": ai_integration_pb2.FINISH_REASON_STOP,
}
# Without the server's tokenizer, ~4 characters per token is the usual estimate for English.
_CHARS_PER_TOKEN = 4


class OpenAICompatibleBackend:
    """One model at one OpenAI-compatible endpoint.

    Args:
        base_url: the API root, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``.
        model: the model's name at that server (the request's ``model`` field).
        api_key: sent as ``Authorization: Bearer``; None for servers that need none.
        timeout: see ``DEFAULT_TIMEOUT``.
        context_tokens: the model's context window, if known (requests are checked against it).
    """

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        context_tokens: int | None = None,
    ) -> None:
        self._endpoint = _http.Endpoint.parse(base_url)
        self._model = model
        self._api_key = api_key
        self._timeout = timeout
        self._context_tokens = context_tokens

    def __repr__(self) -> str:
        # Never the key: reprs end up in logs.
        endpoint = self._endpoint
        return (
            f"<OpenAICompatibleBackend url='{endpoint.scheme}://{endpoint.authority}{endpoint.path}' "
            f"model={self._model!r} key={'set' if self._api_key else 'none'}>"
        )

    @property
    def kind(self) -> BackendKind:
        """``BACKEND_OPENAI_COMPATIBLE``."""
        return ai_integration_pb2.BACKEND_OPENAI_COMPATIBLE

    @property
    def context_tokens(self) -> int | None:
        """As configured; None when unknown (the server then checks for itself)."""
        return self._context_tokens

    def count_tokens(self, text: str) -> int:
        """An estimate (see ``_CHARS_PER_TOKEN``): the real tokenizer lives at the server."""
        return math.ceil(len(text) / _CHARS_PER_TOKEN)

    async def generate(self, generation: Generation) -> Completion:
        """One non-streaming chat completion."""
        limit = self._limit(generation.timeout)
        try:
            async with asyncio.timeout(limit):
                response = await self._post(generation, stream=False)
                try:
                    body = await response.read()
                finally:
                    await response.close()
        except TimeoutError:
            raise _timed_out(limit) from None
        except (OSError, EOFError, _http.ProtocolError, ValueError) as err:
            raise _unreachable(err) from err
        choice, usage = _first_choice(_json(body))
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else None
        text = text if isinstance(text, str) else ""
        stops = StopScanner(generation.stop_sequences)
        text = stops.feed(text) + stops.flush()
        return Completion(text, self._finish(generation, choice, usage, stops.matched, text))

    async def stream(self, generation: Generation) -> AsyncIterator[str | Finish]:
        """A streaming chat completion: one piece per content delta."""
        loop = asyncio.get_running_loop()
        deadline = None if generation.timeout is None else loop.time() + generation.timeout
        limit = self._limit(generation.timeout)
        try:
            async with asyncio.timeout(limit):
                response = await self._post(generation, stream=True)
        except TimeoutError:
            raise _timed_out(limit) from None
        except (OSError, EOFError, _http.ProtocolError, ValueError) as err:
            raise _unreachable(err) from err
        # Closing the response (however this generator ends) drops the connection, which is how
        # the server learns that nobody is reading any more.
        try:
            stops = StopScanner(generation.stop_sequences)
            choice: dict[str, Any] = {}
            usage: dict[str, Any] = {}
            produced: list[str] = []
            events = _events(response.lines())
            while True:
                # Each read gets the idle timeout, cut short by the caller's deadline. One read at
                # a time: a timeout must never span a yield (it would cancel whoever reads us).
                limit = self._limit(None if deadline is None else max(deadline - loop.time(), 0.0))
                try:
                    async with asyncio.timeout(limit):
                        event = await anext(events, None)
                except TimeoutError:
                    raise _timed_out(limit) from None
                except (OSError, EOFError, _http.ProtocolError, ValueError) as err:
                    raise _unreachable(err) from err
                if event is None:
                    if not choice.get("finish_reason"):
                        raise BackendError(_S.UNAVAILABLE, "the backend ended the stream before finishing",
                                           reason="BACKEND_FAILED")
                    break
                if event == "[DONE]":
                    break
                delta_choice, delta_usage = _first_choice(_json(event.encode()), allow_no_choice=True)
                usage = delta_usage or usage
                if delta_choice.get("finish_reason"):
                    choice = delta_choice
                delta = delta_choice.get("delta")
                content = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(content, str) and content:
                    produced.append(content)
                    text = stops.feed(content)
                    if text:
                        yield text
                    if stops.matched:
                        break
            rest = stops.flush()
            if rest:
                yield rest
            yield self._finish(generation, choice, usage, stops.matched, "".join(produced), len(produced))
        finally:
            await response.close()

    def _limit(self, remaining: float | None) -> float:
        return self._timeout if remaining is None else min(self._timeout, remaining)

    async def _post(self, generation: Generation, *, stream: bool) -> _http.Response:
        messages = []
        if generation.system_prompt:
            messages.append({"role": "system", "content": generation.system_prompt})
        messages.append({"role": "user", "content": generation.prompt})
        body: dict[str, Any] = {
            "model": self._model,
            "messages": messages,
            "max_tokens": generation.max_tokens,
            "temperature": generation.temperature,
        }
        if generation.stop_sequences:
            body["stop"] = list(generation.stop_sequences)
        if generation.seed is not None:
            body["seed"] = generation.seed
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
            "User-Agent": "gaming-ai-integration/1",
        }
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        response = await _http.post(self._endpoint, "/chat/completions", json.dumps(body).encode(), headers)
        if response.status >= 300:
            try:
                raise _http_error(response.status, response.headers, await response.read())
            finally:
                await response.close()
        return response

    def _finish(
        self,
        generation: Generation,
        choice: dict[str, Any],
        usage: dict[str, Any],
        stopped_here: bool,
        text: str,
        pieces: int | None = None,
    ) -> Finish:
        if stopped_here or (
            choice.get("finish_reason") == "stop" and choice.get("stop_reason") in generation.stop_sequences
        ):
            # vLLM names the stop sequence that ended the text in `stop_reason`; OpenAI says
            # only "stop", indistinguishable from the model ending on its own.
            reason = ai_integration_pb2.FINISH_REASON_STOP_SEQUENCE
        else:
            reason = FINISH_REASONS.get(str(choice.get("finish_reason")), ai_integration_pb2.FINISH_REASON_STOP)
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        if not isinstance(prompt, int):
            prompt = self.count_tokens(f"{generation.system_prompt or ''}{generation.prompt}")
        if not isinstance(completion, int):
            completion = pieces if pieces is not None else self.count_tokens(text)
        return Finish(reason, prompt, completion)


async def _events(lines: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """Server-Sent Events' data, one string per event (multi-line data joined by newlines)."""
    data: list[str] = []
    async for raw in lines:
        line = raw.decode("utf-8")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        # Comments (":" keep-alives), "event:", "id:" and "retry:" lines carry nothing we use.
    if data:
        yield "\n".join(data)


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError as err:
        raise BackendError(_S.UNAVAILABLE, "the backend answered with malformed JSON",
                           reason="BACKEND_FAILED") from err
    if not isinstance(value, dict):
        raise BackendError(_S.UNAVAILABLE, "the backend answered with unexpected JSON", reason="BACKEND_FAILED")
    if "error" in value:
        # An error sent in place of a result (some servers do this mid-stream, with status 200).
        _log.warning("backend reported an error: %.500s", value["error"])
        raise BackendError(_S.UNAVAILABLE, "the backend failed while generating", reason="BACKEND_FAILED")
    return value


def _first_choice(body: dict[str, Any], *, allow_no_choice: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    choices = body.get("choices")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0], usage or {}
    if allow_no_choice and isinstance(choices, list | None):
        return {}, usage or {}  # the usage-only event that ends a stream
    raise BackendError(_S.UNAVAILABLE, "the backend answered without a choice", reason="BACKEND_FAILED")


def _http_error(status: int, headers: dict[str, str], body: bytes) -> BackendError:
    code, reason, share = HTTP_STATUS_MAP.get(status, _OTHER_4XX if 400 <= status < 500 else _OTHER)
    detail = _error_message(body)
    _log.warning("backend answered HTTP %d: %.500s", status, detail or body[:500])
    message = f"the backend answered HTTP {status}"
    if share and detail:
        message += f": {detail[:300]}"
    return BackendError(code, message, reason=reason, retry_after=_retry_after(headers.get("retry-after")))


def _error_message(body: bytes) -> str:
    try:
        value = json.loads(body)
    except ValueError:
        return ""
    error = value.get("error") if isinstance(value, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return error if isinstance(error, str) else ""


def _retry_after(value: str | None) -> float | None:
    # Only the delay-seconds form: an HTTP date would need the server's clock to agree with ours.
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


def _timed_out(limit: float) -> BackendError:
    return BackendError(_S.DEADLINE_EXCEEDED, f"the backend did not answer within {limit:.3g}s",
                        reason="BACKEND_TIMEOUT")


def _unreachable(err: BaseException) -> BackendError:
    _log.warning("backend unreachable: %r", err)
    return BackendError(_S.UNAVAILABLE, "the backend cannot be reached", reason="BACKEND_UNAVAILABLE")
