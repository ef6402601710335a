"""The API client against a real OpenAI-compatible HTTP server on 127.0.0.1 (no mocked client)."""

import time

import pytest

from tests.compare.openai_server import ScriptedOpenAIServer
from thinkflow.api.cache import ResponseCache
from thinkflow.api.client import (
    APIClient,
    APIError,
    Call,
    Endpoint,
    Limits,
    MissingKey,
    SpendCapReached,
    _retry_after,
)

KEY = "sk-thinkflow-test-KEY-7f3a9c"
ANSWERS = {f"What is {i} plus {i}?": str(2 * i) for i in range(40)}
FAULTS = [None, "429", None, None, "500", None, None, "slow", None, None, "malformed", None, None, "drop", None, None]
FAST = {
    "backoff_base_s": 0.02,
    "backoff_max_s": 0.2,
    "max_retries": 12,
    "requests_per_minute": None,
    "tokens_per_minute": None,
}


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("TEST_API_KEY", KEY)


def _calls(n_questions: int, samples: int, chat: bool = True) -> list[Call]:
    out = []
    for q in list(ANSWERS)[:n_questions]:
        prompt = (
            (("system", "Answer with '#### N'."), ("user", f"Question: {q}\nAnswer:"))
            if chat
            else f"Question: {q}\nAnswer:"
        )
        out += [Call(prompt, max_tokens=32, temperature=1.0, seed=j, sample_index=j) for j in range(samples)]
    return out


def _client(server, tmp_path=None, mode="chat", prices=(0.0, 0.0), **limits) -> APIClient:
    ep = Endpoint(server.base_url, "scripted", "TEST_API_KEY", mode, *prices)
    cache = ResponseCache(tmp_path / "cache.sqlite") if tmp_path else None
    return APIClient(ep, Limits(**(FAST | limits)), cache)


@pytest.mark.parametrize("mode", ["chat", "completions"])
def test_every_fault_is_retried_and_every_result_arrives_exactly_once(tmp_path, mode):
    with ScriptedOpenAIServer(ANSWERS, accuracy=0.7, faults=FAULTS, slow_s=2.5, api_key=KEY) as server:
        client = _client(server, tmp_path, mode, concurrency=8, timeout_s=1.0)
        calls = _calls(20, 3, chat=mode == "chat")
        results = client.run(calls)
    assert all(r is not None for r in results) and len(results) == 60
    assert sum(server.paid.values()) == 60 and server.duplicates == 0  # one paid call per request, no more
    assert set(server.faulted) == {"429", "500", "slow", "malformed", "drop"}
    reasons = client.usage.retry_reasons
    assert {"HTTP 429", "HTTP 500", "timeout", "connection error"} <= set(reasons)
    assert any(r.startswith("malformed") for r in reasons)
    # every injected fault cost a retry (a loaded machine may add a client-side timeout of its own)
    assert client.usage.retries >= sum(server.faulted.values()) and client.usage.paid_calls == 60
    # results line up with their requests: the scripted server's answer for that prompt and seed
    for call, r in zip(calls, results, strict=True):
        text = call.prompt if isinstance(call.prompt, str) else "\n".join(c for _, c in call.prompt)
        assert r.text == server.answer(text, call.seed, call.temperature)


def test_retry_after_is_honoured(tmp_path):
    with ScriptedOpenAIServer(ANSWERS, faults=["429", None], retry_after_s=0.6, api_key=KEY) as server:
        client = _client(server, concurrency=1)
        [result] = client.run(_calls(1, 1))
    assert result.attempts == 2 and len(server.arrivals) == 2
    assert server.arrivals[1] - server.arrivals[0] >= 0.6  # backoff alone would have been <= 0.2 s


def test_retry_after_header_forms():
    assert _retry_after({"retry-after-ms": "250"}) == 0.25
    assert _retry_after({"retry-after": "3"}) == 3.0
    http_date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= _retry_after({"retry-after": http_date}) <= 31
    assert _retry_after({}) is None


def test_a_rerun_is_served_from_the_cache_and_pays_nothing(tmp_path):
    with ScriptedOpenAIServer(ANSWERS, api_key=KEY) as server:
        first = _client(server, tmp_path, concurrency=4).run(_calls(10, 2))
        arrivals = len(server.arrivals)
        again = _client(server, tmp_path, concurrency=4)
        second = again.run(_calls(10, 2))
        # a different sampling setting is a different request: paid for once
        third = _client(server, tmp_path).run([Call(_calls(1, 1)[0].prompt, 32, temperature=0.5, seed=0)])
    assert len(server.arrivals) == arrivals + 1 and again.usage.cache_hits == 20 and again.usage.paid_calls == 0
    assert [r.text for r in first] == [r.text for r in second] and all(r.cached for r in second)
    assert not third[0].cached and server.duplicates == 0


def test_spend_cap_stops_at_the_cap_and_a_rerun_buys_only_the_rest(tmp_path):
    prices = (1000.0, 4000.0)  # $ per million tokens: ~$0.03-0.2 a call here, so the cap binds
    with ScriptedOpenAIServer(ANSWERS, api_key=KEY, usd_per_mtok_in=prices[0], usd_per_mtok_out=prices[1]) as server:
        capped = _client(server, tmp_path, prices=prices, concurrency=4, spend_cap_usd=1.0)
        with pytest.raises(SpendCapReached, match="spend cap") as stop:
            capped.run(_calls(20, 2))
        kept = [r for r in stop.value.results if r is not None]
        assert 0 < len(kept) < 40
        assert server.spent_usd <= 1.0 and capped.usage.spent_usd <= 1.0
        assert capped.usage.spent_usd == pytest.approx(server.spent_usd)
        bought = sum(server.paid.values())
        assert bought == len(kept)  # everything paid for was kept (and cached)

        rest = _client(server, tmp_path, prices=prices, concurrency=4, spend_cap_usd=100.0)
        results = rest.run(_calls(20, 2))
    assert all(r is not None for r in results) and rest.usage.cache_hits == len(kept)
    assert sum(server.paid.values()) == 40 and server.duplicates == 0


def test_rate_limit_is_respected_at_the_server():
    with ScriptedOpenAIServer(ANSWERS, api_key=KEY) as server:
        client = _client(server, concurrency=16, requests_per_minute=600)  # 10/s, bucket of 10
        t0 = time.monotonic()
        client.run(_calls(10, 4))
        wall = time.monotonic() - t0
    assert wall >= (40 - 10) / 10 * 0.95  # the bucket's burst, then 10 per second
    assert server.max_in_window(1.0) <= 10 + 10 + 1  # capacity + one second's refill (+1: window edges)


def test_tokens_per_minute_limit_paces_requests():
    with ScriptedOpenAIServer(ANSWERS, api_key=KEY) as server:
        # each call reserves ~prompt chars + 16 + 32 tokens (~110); 6,000/min = 100/s -> about one call a second
        client = _client(server, concurrency=8, tokens_per_minute=6000)
        t0 = time.monotonic()
        client.run(_calls(4, 1))
    assert time.monotonic() - t0 >= 1.5


def test_bad_key_fails_at_once_without_leaking_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_API_KEY", "sk-wrong-key-123456")
    with ScriptedOpenAIServer(ANSWERS, api_key=KEY) as server:
        client = _client(server)
        with pytest.raises(APIError, match="HTTP 401") as err:
            client.run(_calls(2, 1))
    assert server.unauthorized >= 1 and client.usage.retries == 0  # a 401 is not retried
    assert "sk-wrong-key-123456" not in str(err.value)


def test_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("TEST_API_KEY")
    with pytest.raises(MissingKey, match="TEST_API_KEY"):
        APIClient(Endpoint("http://127.0.0.1:9/v1", "m", "TEST_API_KEY"), Limits())


def test_gives_up_after_max_retries_with_the_reason():
    with ScriptedOpenAIServer(ANSWERS, faults=["500"], api_key=KEY) as server:
        client = _client(server, max_retries=2)
        with pytest.raises(APIError, match="gave up after 3 attempts; last error: HTTP 500"):
            client.run(_calls(1, 1))
    assert len(server.arrivals) == 3 and sum(server.paid.values()) == 0
