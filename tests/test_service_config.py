"""Parsing the gRPC service config: what is kept, and what is refused with a message naming the field."""

from __future__ import annotations

import json

import grpc
import pytest

from mesh.cli import build_parser, main
from mesh.serve import resolve
from nats_transport._service_config import ServiceConfigError, parse_service_config

RETRY = {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
         "retryableStatusCodes": ["UNAVAILABLE"]}


def _config(**method: object) -> dict[str, object]:
    return {"methodConfig": [{"name": [{"service": "a.B"}], **method}]}


def test_a_retry_policy_is_read_with_its_durations_and_codes():
    policy = {**RETRY, "retryableStatusCodes": ["unavailable", 10]}
    config = parse_service_config(json.dumps(_config(retryPolicy=policy)))
    retry = config.for_method("/a.B/M").retry
    assert retry is not None
    assert (retry.max_attempts, retry.initial_backoff, retry.max_backoff) == (3, 0.1, 1.0)
    assert retry.backoff_multiplier == 2.0
    assert retry.retryable_codes == {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED}
    assert [retry.backoff_ceiling(n) for n in (1, 2, 3, 5)] == [0.1, 0.2, 0.4, 1.0]


def test_the_most_specific_name_wins():
    config = parse_service_config({"methodConfig": [
        {"name": [{}], "timeout": "3s"},
        {"name": [{"service": "a.B"}], "timeout": "2s"},
        {"name": [{"service": "a.B", "method": "M"}], "timeout": ".5s"},
    ]})
    assert config.for_method("/a.B/M").timeout == 0.5
    assert config.for_method("/a.B/N").timeout == 2.0
    assert config.for_method("/c.D/M").timeout == 3.0


def test_no_config_means_no_policy():
    config = parse_service_config(None)
    assert config.for_method("/a.B/M").retry is None
    assert config.throttling is None


def test_max_attempts_above_five_is_five_and_hedging_delay_defaults_to_zero():
    config = parse_service_config(_config(hedgingPolicy={"maxAttempts": 8, "nonFatalStatusCodes": []}))
    hedging = config.for_method("/a.B/M").hedging
    assert hedging is not None
    assert (hedging.max_attempts, hedging.delay, hedging.non_fatal_codes) == (5, 0.0, frozenset())


def test_throttling_keeps_three_decimals_of_the_ratio():
    throttling = parse_service_config({"retryThrottling": {"maxTokens": 10, "tokenRatio": 0.12345}}).throttling
    assert throttling is not None
    assert (throttling.max_tokens, throttling.token_ratio) == (10.0, 0.123)


@pytest.mark.parametrize(("document", "names"), [
    ("{not json", "not JSON"),
    ("[]", "JSON object"),
    (_config(retryPolicy={**RETRY, "maxAttempts": 1}), "maxAttempts must be at least 2"),
    (_config(retryPolicy={**RETRY, "maxAttempts": 2.5}), "maxAttempts must be an integer"),
    (_config(retryPolicy={k: v for k, v in RETRY.items() if k != "initialBackoff"}), "initialBackoff is required"),
    (_config(retryPolicy={**RETRY, "initialBackoff": "0s"}), "must be > 0"),
    (_config(retryPolicy={**RETRY, "maxBackoff": "1"}), "maxBackoff must be a duration"),
    (_config(retryPolicy={**RETRY, "backoffMultiplier": "2"}), "backoffMultiplier must be a number"),
    (_config(retryPolicy={**RETRY, "retryableStatusCodes": []}), "must not be empty"),
    (_config(retryPolicy={**RETRY, "retryableStatusCodes": ["NOPE"]}), "'NOPE' is not a non-OK status code"),
    (_config(retryPolicy={**RETRY, "retryableStatusCodes": ["OK"]}), "'OK' is not a non-OK status code"),
    (_config(retryPolicy=RETRY, hedgingPolicy={"maxAttempts": 2}), "mutually exclusive"),
    (_config(timeout="-1s"), "timeout must not be negative"),
    (_config(waitForReady="yes"), "waitForReady must be a boolean"),
    ({"methodConfig": [{"name": [{"method": "M"}]}]}, "a method needs its service"),
    ({"methodConfig": [{"name": [{"service": "a.B"}]}, {"name": [{"service": "a.B"}]}]}, "duplicate name a.B"),
    ({"retryThrottling": {"maxTokens": 0, "tokenRatio": 0.1}}, "maxTokens must be in (0, 1000]"),
    ({"retryThrottling": {"maxTokens": 10}}, "tokenRatio is required"),
])
def test_an_invalid_config_is_refused_naming_what_is_wrong(document, names):
    with pytest.raises(ServiceConfigError, match=names.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_service_config(document if isinstance(document, str) else json.dumps(document))


def test_fields_the_channel_does_not_use_are_accepted():
    config = parse_service_config({"loadBalancingConfig": [{"round_robin": {}}],
                                   "methodConfig": [{"name": [{}], "maxRequestMessageBytes": 1024}]})
    assert config.for_method("/a.B/M").retry is None


def test_mesh_serve_refuses_a_bad_service_config_file_in_one_line(tmp_path, capsys):
    bad = tmp_path / "service-config.json"
    bad.write_text(json.dumps(_config(retryPolicy={**RETRY, "maxAttempts": 1})))
    assert main(["serve", "settings", "--service-config", str(bad)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert "--service-config" in error
    assert "maxAttempts must be at least 2" in error


def test_mesh_serve_reads_the_service_config_for_its_calls_to_other_targets(tmp_path):
    good = tmp_path / "service-config.json"
    good.write_text(json.dumps(_config(retryPolicy=RETRY)))
    args = build_parser().parse_args(["serve", "settings", "--service-config", str(good)])
    config, _ = resolve(args, environ={})
    assert config.service_config is not None
    assert config.service_config.for_method("/a.B/M").retry is not None
