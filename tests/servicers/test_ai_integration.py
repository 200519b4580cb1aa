"""ai-integration over NATS: the built-in model (deterministic, bounded, cancellable) and the
OpenAI-compatible HTTP backend against a stand-in server on loopback (an outside system we do not
ship, so a stand-in is fair), with every documented error mapped to its gRPC code."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from gaming.ai_integration.v1 import ai_integration_pb2 as ai
from gaming.ai_integration.v1 import ai_integration_pb2_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.aio.client import Client

from mesh.jetstream_storage import JetStreamStorage
from servicers import ai_integration
from servicers.ai_integration.backends import Completion, Finish, Generation, StopScanner
from servicers.ai_integration.corpus.fantasy import TEXT as CORPUS
from servicers.ai_integration.local import (
    LOCAL_CONTEXT_TOKENS,
    LocalBackend,
    TrigramModel,
    load_local_backend,
    tokenize,
)
from servicers.dependencies import Dependencies
from tests._serving import served
from tests._waiting import wait_for

LOCAL = "local-tiny"
KEY_ENV = "AI_INTEGRATION_TEST_API_KEY"
# Greedy decoding from this prompt settles into a loop of the corpus, so it never ends by itself:
# a generation that only max_tokens, a deadline or a cancel can stop.
ENDLESS: dict[str, Any] = {"prompt": "The innkeeper", "temperature": 0.0}


def no_channel(target: str) -> Any:
    raise AssertionError(f"ai-integration calls no other service (asked for {target!r})")


@contextlib.asynccontextmanager
async def serving(nc: Client, storage: Any, **settings: str) -> AsyncIterator[tuple[Any, Any]]:
    """(stub, servicer) for an ai-integration created with ``settings``."""
    servicer = await ai_integration.create(Dependencies(storage=storage, channel=no_channel, settings=settings))
    async with served(nc, ai_integration.add_to_server, servicer) as channel:
        yield ai_integration_pb2_grpc.AiIntegrationServiceStub(channel), servicer


@pytest.fixture
async def stub(nc: Client, storage: JetStreamStorage) -> AsyncIterator[Any]:
    async with serving(nc, storage) as (stub, _):
        yield stub


def local_backend(servicer: Any) -> LocalBackend:
    backend = servicer.backends[LOCAL]
    assert isinstance(backend, LocalBackend)
    return backend


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def stream_failure(call: Any) -> tuple[list[Any], grpc.aio.AioRpcError]:
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in call:
            received.append(message)
    return received, caught.value


def detail(err: grpc.aio.AioRpcError, kind: Any) -> Any:
    status = rpc_status.from_call(err)
    assert status is not None
    for packed in status.details:
        found = kind()
        if packed.Unpack(found):
            return found
    raise AssertionError(f"no {kind.__name__} in {status.details}")


def bad_field(err: grpc.aio.AioRpcError) -> str:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    return str(detail(err, error_details_pb2.BadRequest).field_violations[0].field)


async def collect(call: Any) -> list[Any]:
    return [message async for message in call]


# -- the built-in model ----------------------------------------------------------------------------


async def test_generate_with_the_local_model_is_deterministic_for_a_seed(stub: Any) -> None:
    request = ai.GenerateRequest(model=LOCAL, prompt="Tell me about the dragon", seed=42, max_tokens=64)
    first = await stub.Generate(request, timeout=5)
    again = await stub.Generate(request, timeout=5)
    other = await stub.Generate(ai.GenerateRequest(model=LOCAL, prompt="Tell me about the dragon", seed=7,
                                                   max_tokens=64), timeout=5)
    assert first.text
    assert first.text == again.text
    assert other.text != first.text
    assert (first.model, first.backend) == (LOCAL, ai.BACKEND_LOCAL)
    assert first.finish_reason in (ai.FINISH_REASON_STOP, ai.FINISH_REASON_LENGTH)
    assert first.usage.prompt_tokens == 5  # Tell, me, about, the, dragon
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    assert 0 < first.usage.completion_tokens <= 64
    assert first.latency.ToNanoseconds() > 0


async def test_generate_stops_at_max_tokens_with_finish_reason_length(stub: Any) -> None:
    reply = await stub.Generate(ai.GenerateRequest(model=LOCAL, max_tokens=7, seed=1, **ENDLESS), timeout=5)
    assert reply.finish_reason == ai.FINISH_REASON_LENGTH
    assert reply.usage.completion_tokens == 7
    assert reply.text == "Maela keeps the Lantern and Lark,"


async def test_zero_max_tokens_means_256(stub: Any) -> None:
    reply = await stub.Generate(ai.GenerateRequest(model=LOCAL, seed=1, **ENDLESS), timeout=5)
    assert (reply.finish_reason, reply.usage.completion_tokens) == (ai.FINISH_REASON_LENGTH, 256)


async def test_the_model_can_end_its_answer_by_itself(stub: Any) -> None:
    replies = [
        await stub.Generate(ai.GenerateRequest(model=LOCAL, prompt="The dragon", seed=seed, max_tokens=4096),
                            timeout=5)
        for seed in range(5)
    ]
    assert ai.FINISH_REASON_STOP in {reply.finish_reason for reply in replies}


async def test_a_stop_sequence_ends_the_text_before_it(stub: Any) -> None:
    request = ai.GenerateRequest(model=LOCAL, seed=1, max_tokens=50, stop_sequences=["Lark", "zzz"], **ENDLESS)
    reply = await stub.Generate(request, timeout=5)
    assert (reply.text, reply.finish_reason) == ("Maela keeps the Lantern and ", ai.FINISH_REASON_STOP_SEQUENCE)
    assert reply.usage.completion_tokens == 6  # the model did generate "Lark"; it is only not shown


async def test_temperature_zero_is_greedy_whatever_the_seed(stub: Any) -> None:
    texts = {
        (await stub.Generate(ai.GenerateRequest(model=LOCAL, seed=seed, max_tokens=20, **ENDLESS), timeout=5)).text
        for seed in (1, 2, 3)
    }
    assert len(texts) == 1


async def test_without_a_seed_the_model_still_answers(stub: Any) -> None:
    reply = await stub.Generate(ai.GenerateRequest(model=LOCAL, prompt="The ranger", max_tokens=16), timeout=5)
    assert reply.text
    assert 0 < reply.usage.completion_tokens <= 16


async def test_stream_generate_sends_the_same_text_token_by_token(stub: Any) -> None:
    fields: dict[str, Any] = {"model": LOCAL, "prompt": "The old mill", "seed": 9, "max_tokens": 40}
    whole = await stub.Generate(ai.GenerateRequest(**fields), timeout=5)
    messages = await collect(stub.StreamGenerate(ai.StreamGenerateRequest(**fields), timeout=5))
    assert "".join(message.text for message in messages) == whole.text
    assert [message.index for message in messages] == list(range(len(messages)))
    assert (messages[0].model, messages[0].backend) == (LOCAL, ai.BACKEND_LOCAL)
    assert all(not message.model and not message.backend for message in messages[1:])
    assert all(message.finish_reason == ai.FINISH_REASON_UNSPECIFIED for message in messages[:-1])
    assert not any(message.HasField("usage") for message in messages[:-1])
    last = messages[-1]
    assert last.finish_reason == whole.finish_reason
    assert last.usage == whole.usage
    # One token per message, then the final message.
    assert len(messages) == whole.usage.completion_tokens + 1


async def test_a_stop_sequence_split_across_tokens_never_reaches_a_stream(stub: Any) -> None:
    request = ai.StreamGenerateRequest(model=LOCAL, seed=1, max_tokens=50, stop_sequences=["Lantern and L"],
                                       **ENDLESS)
    messages = await collect(stub.StreamGenerate(request, timeout=5))
    assert "".join(message.text for message in messages) == "Maela keeps the "
    assert messages[-1].finish_reason == ai.FINISH_REASON_STOP_SEQUENCE


async def test_a_new_instance_gives_the_same_answer_for_the_same_seed(nc: Client, storage: Any) -> None:
    # ai-integration keeps no state; what must survive a restart is its determinism.
    request = ai.GenerateRequest(model=LOCAL, prompt="Snow falls", seed=2024, max_tokens=48, temperature=1.2)
    async with serving(nc, storage) as (stub, _):
        before = await stub.Generate(request, timeout=5)
    async with serving(nc, storage) as (stub, _):
        after = await stub.Generate(request, timeout=5)
    assert before.text == after.text
    assert before.usage == after.usage


@pytest.mark.parametrize("method", ["Generate", "StreamGenerate"])
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": ""}, "model"),
        ({"model": "has space"}, "model"),
        ({"model": "m" * 129}, "model"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 32769}, "prompt"),
        ({"system_prompt": "s" * 8193}, "system_prompt"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 4097}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
        ({"stop_sequences": ["ok", ""]}, "stop_sequences[1]"),
        ({"stop_sequences": ["s" * 65]}, "stop_sequences[0]"),
    ],
)
async def test_out_of_range_fields_are_invalid_argument_naming_the_field(
    stub: Any, method: str, change: dict[str, Any], field: str
) -> None:
    fields: dict[str, Any] = {"model": LOCAL, "prompt": "Hello", **change}
    if method == "Generate":
        err = await failure(stub.Generate(ai.GenerateRequest(**fields), timeout=5))
    else:
        _, err = await stream_failure(stub.StreamGenerate(ai.StreamGenerateRequest(**fields), timeout=5))
    assert bad_field(err) == field


async def test_a_prompt_beyond_the_context_window_is_invalid(stub: Any) -> None:
    words = "a " * (LOCAL_CONTEXT_TOKENS + 1)  # 16 386 characters: within the 32 768 allowed
    err = await failure(stub.Generate(ai.GenerateRequest(model=LOCAL, prompt=words), timeout=5))
    assert bad_field(err) == "prompt"


async def test_prompt_plus_max_tokens_beyond_the_context_window_is_invalid(stub: Any) -> None:
    prompt = "a " * (LOCAL_CONTEXT_TOKENS - 100)
    err = await failure(stub.Generate(ai.GenerateRequest(model=LOCAL, prompt=prompt, max_tokens=101), timeout=5))
    assert bad_field(err) == "max_tokens"
    reply = await stub.Generate(ai.GenerateRequest(model=LOCAL, prompt=prompt, max_tokens=100, seed=1), timeout=5)
    assert reply.usage.prompt_tokens == LOCAL_CONTEXT_TOKENS - 100


@pytest.mark.parametrize("method", ["Generate", "StreamGenerate"])
async def test_a_model_no_backend_serves_is_not_found(stub: Any, method: str) -> None:
    if method == "Generate":
        err = await failure(stub.Generate(ai.GenerateRequest(model="gpt-17", prompt="Hi"), timeout=5))
    else:
        _, err = await stream_failure(stub.StreamGenerate(ai.StreamGenerateRequest(model="gpt-17", prompt="Hi"),
                                                          timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert detail(err, error_details_pb2.ErrorInfo).reason == "MODEL_NOT_FOUND"
    assert LOCAL in (err.details() or "")


async def test_cancelling_a_stream_stops_the_local_generation(nc: Client, storage: Any) -> None:
    async with serving(nc, storage, local_token_interval_ms="20") as (stub, servicer):
        backend = local_backend(servicer)
        call = stub.StreamGenerate(ai.StreamGenerateRequest(model=LOCAL, max_tokens=4096, seed=1, **ENDLESS))
        first = await call.read()
        assert first.text == "Maela"
        assert backend.active == 1
        call.cancel()
        await wait_for(lambda: backend.active == 0)
        # The generator was closed before it finished: at 20 ms a token, the 4096-token answer
        # would have taken 80 s; it stopped after a handful.
        assert backend.interrupted == 1
        assert backend.tokens_generated < 50


async def test_a_deadline_stops_a_slow_local_generation(nc: Client, storage: Any) -> None:
    async with serving(nc, storage, local_token_interval_ms="20") as (stub, servicer):
        backend = local_backend(servicer)
        err = await failure(stub.Generate(ai.GenerateRequest(model=LOCAL, max_tokens=4096, **ENDLESS), timeout=0.3))
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await wait_for(lambda: backend.active == 0)
        # The generation was stopped by the deadline, far short of the 4096 tokens it was asked for.
        assert backend.interrupted == 1
        assert backend.tokens_generated < 4096


class RecordingBackend:
    """A backend that answers at once and remembers what it was asked, deadline included."""

    kind = ai.BACKEND_OPENAI_COMPATIBLE
    context_tokens = None

    def __init__(self) -> None:
        self.seen: list[Generation] = []

    def count_tokens(self, text: str) -> int:
        return len(text)

    async def generate(self, generation: Generation) -> Completion:
        self.seen.append(generation)
        return Completion("ok", Finish(ai.FINISH_REASON_STOP, 1, 1))

    async def stream(self, generation: Generation) -> AsyncIterator[str | Finish]:
        self.seen.append(generation)
        yield "ok"
        yield Finish(ai.FINISH_REASON_STOP, 1, 1)


async def test_the_callers_deadline_reaches_the_backend(nc: Client) -> None:
    backend = RecordingBackend()
    servicer = ai_integration.AiIntegrationServicer({"probe": backend})
    async with served(nc, ai_integration.add_to_server, servicer) as channel:
        stub = ai_integration_pb2_grpc.AiIntegrationServiceStub(channel)
        await stub.Generate(ai.GenerateRequest(model="probe", prompt="Hi"), timeout=0.5)
        await collect(stub.StreamGenerate(ai.StreamGenerateRequest(model="probe", prompt="Hi"), timeout=0.4))
        await stub.Generate(ai.GenerateRequest(model="probe", prompt="Hi"))
    unary, streamed, unbounded = (generation.timeout for generation in backend.seen)
    assert unary is not None
    assert 0 < unary <= 0.5
    assert streamed is not None
    assert 0 < streamed <= 0.4
    assert unbounded is None


# -- pure parts --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stops", "pieces", "emitted", "matched"),
    [
        ((), ["a", "b"], "ab", False),
        (("END",), ["one ", "two"], "one two", False),
        (("END",), ["one E", "N", "D two"], "one ", True),
        (("END",), ["one E", "x"], "one Ex", False),
        (("END",), ["one EN"], "one EN", False),  # held back until flushed at the end
        (("b", "ab"), ["xab"], "x", True),  # the earliest match wins
        (("lo",), ["hello"], "hel", True),
    ],
)
def test_the_stop_scanner_emits_text_up_to_the_first_stop(
    stops: tuple[str, ...], pieces: list[str], emitted: str, matched: bool
) -> None:
    scanner = StopScanner(stops)
    text = "".join(scanner.feed(piece) for piece in pieces) + scanner.flush()
    assert (text, scanner.matched) == (emitted, matched)


async def test_the_trigram_model_backs_off_to_one_token_then_to_a_paragraph_start() -> None:
    model = TrigramModel.train("The cat sat.\n\nA dog ran.")
    assert model.choices("the", "cat").tokens == ("sat",)  # trigram, case-insensitive
    assert model.choices("green", "dog").tokens == ("ran",)  # bigram
    assert model.choices("no", "idea").tokens == ("The", "A")  # start of a paragraph
    backend = LocalBackend(model)
    completion = await backend.generate(Generation(prompt="A", seed=3, temperature=0))
    assert (completion.text, completion.finish.finish_reason) == ("dog ran.", ai.FINISH_REASON_STOP)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"backend": "magic"}, "backend"),
        ({"backend": "openai", "model": "m"}, "base_url"),
        ({"backend": "openai", "base_url": "http://127.0.0.1:1/v1"}, "model"),
        ({"backend": "openai", "base_url": "ftp://example/v1", "model": "m"}, "http"),
        ({"backend": "openai", "base_url": "http://h/v1", "model": "org/model"}, "served_model"),
        ({"backend": "openai", "base_url": "http://h/v1", "model": "m", "served_model": LOCAL}, "served_model"),
        ({"backend": "openai", "base_url": "http://h/v1", "model": "m", "timeout_s": "0"}, "timeout_s"),
        ({"backend": "openai", "base_url": "http://h/v1", "model": "m", "context_tokens": "-5"}, "context_tokens"),
        ({"local_token_interval_ms": "soon"}, "local_token_interval_ms"),
    ],
)
async def test_malformed_settings_are_refused_at_start_up(
    storage: Any, settings: dict[str, str], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        await ai_integration.create(Dependencies(storage=storage, channel=no_channel, settings=settings))


def test_the_local_model_trains_on_a_small_corpus_and_knows_it() -> None:
    # Training is one counting pass over the corpus, at every start of ai-integration: a corpus of
    # a few thousand tokens keeps that to milliseconds. Its size is checked, not a clock.
    assert len(tokenize(CORPUS)) <= 10_000
    backend = load_local_backend()
    assert backend.count_tokens("Maela's inn, by the well-worn road.") == 8


# -- the OpenAI-compatible backend, against a stand-in server ------------------------------------------


@dataclass
class Reply:
    """What the stand-in answers: a JSON body, or (with ``events``) a Server-Sent Events stream."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    events: list[str] | None = None
    event_delay: float = 0.0
    chunked: bool = True
    hang: bool = False
    stall: bool = False  # after the events, neither end the body nor close: a stalled stream


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class StandInServer:
    """A minimal OpenAI-compatible HTTP server on a free loopback port, run on the test's loop.

    It records requests, answers with ``reply``, and counts the events it streams; when a client
    goes away mid-stream it stops, as real inference servers do, and says so in ``abandoned``.
    """

    def __init__(self) -> None:
        self.reply = Reply()
        self.requests: list[Recorded] = []
        self.events_sent = 0
        self.abandoned = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def __aenter__(self) -> StandInServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_line = (await reader.readline()).decode()
        headers = {}
        while (line := (await reader.readline()).decode().strip()):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append(Recorded(request_line.split()[1], headers, json.loads(body)))
        reply = self.reply
        if reply.hang:
            await reader.read()  # until the client gives up and closes
            self.abandoned += 1
            return
        head = [f"HTTP/1.1 {reply.status} Whatever", *(f"{k}: {v}" for k, v in reply.headers.items())]
        if reply.events is None:
            payload = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
            await writer.drain()
            return
        head += ["Content-Type: text/event-stream"] + (["Transfer-Encoding: chunked"] if reply.chunked else [])
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        client_gone = asyncio.ensure_future(reader.read())  # EOF when the client closes
        try:
            for data in reply.events:
                if client_gone.done():
                    self.abandoned += 1
                    return
                frame = f": keep-alive\n\ndata: {data}\n\n".encode()
                writer.write(f"{len(frame):x}\r\n".encode() + frame + b"\r\n" if reply.chunked else frame)
                await writer.drain()
                self.events_sent += 1
                if reply.event_delay:
                    # Pacing, like a model producing tokens; not a wait for a condition.
                    await asyncio.sleep(reply.event_delay)
            if reply.stall:
                await client_gone
                self.abandoned += 1
                return
            if reply.chunked:
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        finally:
            client_gone.cancel()


def completion_body(text: str, finish: str = "stop", usage: dict[str, int] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "cmpl-1", "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def delta(content: str | None = None, finish: str | None = None) -> str:
    choice: dict[str, Any] = {"index": 0, "delta": {} if content is None else {"content": content},
                              "finish_reason": finish}
    return json.dumps({"object": "chat.completion.chunk", "choices": [choice]})


def usage_event(prompt: int, completion: int) -> str:
    return json.dumps({"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                                "total_tokens": prompt + completion}})


@contextlib.asynccontextmanager
async def remote(nc: Client, storage: Any, **settings: str) -> AsyncIterator[tuple[Any, StandInServer]]:
    """(stub, stand-in) for an ai-integration serving ``remote`` from the stand-in server."""
    async with StandInServer() as server:
        configured = {"backend": "openai", "base_url": server.url, "model": "standin-7b", "served_model": "remote",
                      "api_key_env": KEY_ENV, **settings}
        async with serving(nc, storage, **configured) as (stub, _):
            yield stub, server


async def test_generate_through_an_openai_compatible_server(
    nc: Client, storage: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test-123")
    async with remote(nc, storage) as (stub, server):
        server.reply = Reply(body=completion_body("The gate is shut.", "length", {"prompt_tokens": 11,
                                                                                 "completion_tokens": 5}))
        reply = await stub.Generate(ai.GenerateRequest(
            model="remote", prompt="Open the gate", system_prompt="You are a guard.", max_tokens=5,
            temperature=0.2, seed=77, stop_sequences=["\n\n"]), timeout=5)
        # The local model is served beside the remote one.
        local = await stub.Generate(ai.GenerateRequest(model=LOCAL, prompt="The gate", seed=1), timeout=5)
    assert (reply.text, reply.finish_reason) == ("The gate is shut.", ai.FINISH_REASON_LENGTH)
    assert (reply.model, reply.backend) == ("remote", ai.BACKEND_OPENAI_COMPATIBLE)
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (11, 5, 16)
    assert local.backend == ai.BACKEND_LOCAL
    [sent] = server.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-test-123"
    assert sent.body == {
        "model": "standin-7b",
        "messages": [{"role": "system", "content": "You are a guard."}, {"role": "user", "content": "Open the gate"}],
        "max_tokens": 5, "temperature": pytest.approx(0.2), "stop": ["\n\n"], "seed": 77,
    }


async def test_without_the_key_variable_no_authorization_is_sent_and_usage_is_estimated(
    nc: Client, storage: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    async with remote(nc, storage) as (stub, server):
        server.reply = Reply(body=completion_body("Aye."))
        reply = await stub.Generate(ai.GenerateRequest(model="remote", prompt="12345678"), timeout=5)
    assert "authorization" not in server.requests[0].headers
    assert "seed" not in server.requests[0].body  # unset seed: none sent
    assert server.requests[0].body["max_tokens"] == 256
    assert server.requests[0].body["temperature"] == pytest.approx(0.7)
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (2, 1)
    assert reply.finish_reason == ai.FINISH_REASON_STOP


@pytest.mark.parametrize("chunked", [True, False])
async def test_stream_generate_relays_server_sent_events(nc: Client, storage: Any, chunked: bool) -> None:
    async with remote(nc, storage) as (stub, server):
        server.reply = Reply(chunked=chunked, events=[
            delta(""), delta("Hail"), delta(", "), delta("traveller"), delta(None, "stop"), usage_event(9, 3), "[DONE]",
        ])
        messages = await collect(stub.StreamGenerate(ai.StreamGenerateRequest(model="remote", prompt="Greet me"),
                                                     timeout=5))
    assert [message.text for message in messages] == ["Hail", ", ", "traveller", ""]
    assert (messages[0].model, messages[0].backend) == ("remote", ai.BACKEND_OPENAI_COMPATIBLE)
    assert messages[-1].finish_reason == ai.FINISH_REASON_STOP
    assert (messages[-1].usage.prompt_tokens, messages[-1].usage.completion_tokens) == (9, 3)
    body = server.requests[0].body
    assert (body["stream"], body["stream_options"]) == (True, {"include_usage": True})


async def test_a_stop_sequence_the_server_ignores_is_cut_here_and_ends_the_stream(nc: Client, storage: Any) -> None:
    async with remote(nc, storage) as (stub, server):
        server.reply = Reply(events=[delta("Run"), delta(" now"), delta("! The"), delta(" end")] * 50, event_delay=0.01)
        messages = await collect(stub.StreamGenerate(ai.StreamGenerateRequest(
            model="remote", prompt="Go", stop_sequences=["!"]), timeout=5))
        await wait_for(lambda: server.abandoned == 1)
    assert "".join(message.text for message in messages) == "Run now"
    assert messages[-1].finish_reason == ai.FINISH_REASON_STOP_SEQUENCE
    assert server.events_sent < 200


async def test_cancelling_a_remote_stream_disconnects_and_the_server_stops(nc: Client, storage: Any) -> None:
    async with remote(nc, storage) as (stub, server):
        server.reply = Reply(events=[delta(f" word{i}") for i in range(1000)], event_delay=0.01)
        call = stub.StreamGenerate(ai.StreamGenerateRequest(model="remote", prompt="Talk"))
        assert (await call.read()).text == " word0"
        call.cancel()
        await wait_for(lambda: server.abandoned == 1)
        assert server.events_sent < 1000


@pytest.mark.parametrize(
    ("status", "code", "reason", "shown"),
    [
        (400, grpc.StatusCode.INVALID_ARGUMENT, "BACKEND_REJECTED_REQUEST", True),
        (401, grpc.StatusCode.PERMISSION_DENIED, "BACKEND_CREDENTIALS_REJECTED", False),
        (403, grpc.StatusCode.PERMISSION_DENIED, "BACKEND_CREDENTIALS_REJECTED", False),
        (404, grpc.StatusCode.NOT_FOUND, "BACKEND_MODEL_NOT_FOUND", True),
        (418, grpc.StatusCode.INVALID_ARGUMENT, "BACKEND_REJECTED_REQUEST", True),
        (500, grpc.StatusCode.UNAVAILABLE, "BACKEND_FAILED", False),
        (503, grpc.StatusCode.UNAVAILABLE, "BACKEND_FAILED", False),
        (504, grpc.StatusCode.DEADLINE_EXCEEDED, "BACKEND_TIMEOUT", False),
    ],
)
@pytest.mark.parametrize("method", ["Generate", "StreamGenerate"])
async def test_http_errors_map_to_grpc_codes(
    nc: Client, storage: Any, method: str, status: int, code: grpc.StatusCode, reason: str, shown: bool
) -> None:
    async with remote(nc, storage) as (stub, server):
        server.reply = Reply(status=status, body={"error": {"message": "secret-ish detail", "type": "x"}})
        if method == "Generate":
            err = await failure(stub.Generate(ai.GenerateRequest(model="remote", prompt="Hi"), timeout=5))
        else:
            received, err = await stream_failure(stub.StreamGenerate(
                ai.StreamGenerateRequest(model="remote", prompt="Hi"), timeout=5))
            assert received == []
    assert err.code() == code
    info = detail(err, error_details_pb2.ErrorInfo)
    assert (info.reason, info.metadata["model"]) == (reason, "remote")
    assert ("secret-ish detail" in (err.details() or "")) == shown


async def test_rate_limiting_is_resource_exhausted_with_the_servers_retry_delay(nc: Client, storage: Any) -> None:
    async with remote(nc, storage) as (stub, server):
        server.reply = Reply(status=429, headers={"Retry-After": "7"}, body={"error": {"message": "slow down"}})
        err = await failure(stub.Generate(ai.GenerateRequest(model="remote", prompt="Hi"), timeout=5))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert detail(err, error_details_pb2.RetryInfo).retry_delay.seconds == 7


async def test_an_unreachable_server_is_unavailable(nc: Client, storage: Any) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = {"backend": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "model": "m", "served_model": "remote"}
    async with serving(nc, storage, **settings) as (stub, _):
        err = await failure(stub.Generate(ai.GenerateRequest(model="remote", prompt="Hi"), timeout=5))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert detail(err, error_details_pb2.ErrorInfo).reason == "BACKEND_UNAVAILABLE"
        _, err = await stream_failure(stub.StreamGenerate(ai.StreamGenerateRequest(model="remote", prompt="Hi"),
                                                          timeout=5))
        assert err.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_server_slower_than_the_configured_timeout_is_deadline_exceeded(nc: Client, storage: Any) -> None:
    async with remote(nc, storage, timeout_s="0.2") as (stub, server):
        server.reply = Reply(hang=True)
        err = await failure(stub.Generate(ai.GenerateRequest(model="remote", prompt="Hi"), timeout=5))
        # The servicer's own 0.2 s timeout ended it (an ErrorInfo it adds), not the caller's 5 s deadline.
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert detail(err, error_details_pb2.ErrorInfo).reason == "BACKEND_TIMEOUT"
        # We hung up, so the server's request ends too.
        await wait_for(lambda: server.abandoned == 1)


async def test_the_callers_deadline_bounds_the_remote_call(nc: Client, storage: Any) -> None:
    async with remote(nc, storage) as (stub, server):  # the configured timeout is 60 s
        server.reply = Reply(hang=True)
        err = await failure(stub.Generate(ai.GenerateRequest(model="remote", prompt="Hi"), timeout=0.3))
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The remote request was given up long before the configured 60 s: bounded by the caller.
        await wait_for(lambda: server.abandoned == 1)


async def test_a_stream_that_stalls_is_deadline_exceeded_after_what_it_sent(nc: Client, storage: Any) -> None:
    async with remote(nc, storage, timeout_s="0.3") as (stub, server):
        server.reply = Reply(events=[delta("Once"), delta(" upon")], stall=True)
        received, err = await stream_failure(stub.StreamGenerate(
            ai.StreamGenerateRequest(model="remote", prompt="Tell"), timeout=5))
        await wait_for(lambda: server.abandoned == 1)
    assert [message.text for message in received] == ["Once", " upon"]
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize(
    "events",
    [
        [delta("Half"), json.dumps({"error": {"message": "model crashed"}})],
        [delta("Half")],  # the connection ends with no finish_reason and no [DONE]
        [delta("Half"), "{not json"],
    ],
)
async def test_a_stream_that_fails_midway_is_unavailable_after_the_first_chunk(
    nc: Client, storage: Any, events: list[str]
) -> None:
    async with remote(nc, storage) as (stub, server):
        server.reply = Reply(events=events, chunked=False)
        received, err = await stream_failure(stub.StreamGenerate(
            ai.StreamGenerateRequest(model="remote", prompt="Tell"), timeout=5))
    assert [message.text for message in received] == ["Half"]
    assert received[0].model == "remote"
    assert err.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("body", [b"<html>bad gateway</html>", {"choices": []}, {"error": "overloaded"}])
async def test_a_malformed_answer_is_unavailable(nc: Client, storage: Any, body: Any) -> None:
    async with remote(nc, storage) as (stub, server):
        server.reply = Reply(body=body)
        err = await failure(stub.Generate(ai.GenerateRequest(model="remote", prompt="Hi"), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


async def test_content_filtering_is_reported_as_such(nc: Client, storage: Any) -> None:
    async with remote(nc, storage, context_tokens="100") as (stub, server):
        server.reply = Reply(body=completion_body("", "content_filter"))
        reply = await stub.Generate(ai.GenerateRequest(model="remote", prompt="Hi", max_tokens=50), timeout=5)
        # With a configured window, the estimate (4 characters a token) is checked here.
        err = await failure(stub.Generate(ai.GenerateRequest(model="remote", prompt="x" * 300, max_tokens=50),
                                          timeout=5))
    assert reply.finish_reason == ai.FINISH_REASON_CONTENT_FILTER
    assert bad_field(err) == "max_tokens"
    assert len(server.requests) == 1


def test_the_remote_backends_repr_never_shows_the_key() -> None:
    backends = ai_integration.configured_backends(
        {"backend": "openai", "base_url": "https://api.example.com/v1", "model": "m-1"}, {"OPENAI_API_KEY": "sk-zz"}
    )
    shown = repr(backends["m-1"])
    assert "sk-zz" not in shown
    assert "https://api.example.com/v1" in shown
