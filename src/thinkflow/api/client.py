"""Async client for OpenAI-compatible endpoints, through the official ``openai`` SDK.

What it does around each call:

- at most ``concurrency`` requests in flight, and client-side rate limits on requests and
  tokens per minute (``ratelimit.TokenBucket``);
- retries of 429, 5xx, 408/409, timeouts, dropped connections and malformed responses, with
  exponential backoff and jitter, waiting at least what a ``Retry-After`` / ``retry-after-ms``
  header asks; other 4xx fail at once (retrying a bad request or a bad key cannot help);
- a persistent response cache (``cache.ResponseCache``) consulted before and written after
  every call: a rerun, or a resume after a crash, pays for nothing twice;
- a spend cap: a call is only sent when the money already spent plus the worst case of every
  call in flight, this one included (prompt characters as tokens, ``max_tokens`` out), stays
  within the cap. Reaching it stops sending; what was bought is kept (and cached);
- usage and cost per call.

The API key is read from the environment variable the config names, passed to the SDK and
nowhere else: it is not in cache keys, cached values, results, errors or logs.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import threading
import time
from dataclasses import asdict, dataclass, field

import openai

from thinkflow.api.cache import ResponseCache, cache_key
from thinkflow.api.ratelimit import TokenBucket

log = logging.getLogger("thinkflow.api")
RETRY_STATUS = {408, 409, 429}  # plus every 5xx


class APIError(RuntimeError):
    """A call failed for good (a 4xx other than 408/409/429, or retries exhausted)."""


class SpendCapReached(RuntimeError):
    """The spend cap stopped the run; ``results`` holds what was bought (None where not)."""

    def __init__(self, message: str, results: list) -> None:
        super().__init__(message)
        self.results = results


class MissingKey(RuntimeError):
    """The environment variable that should hold the API key is unset or empty."""


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    model: str
    api_key_env: str  # the *name* of the environment variable holding the key
    mode: str = "chat"  # "chat" (messages) or "completions" (raw text continuation)
    usd_per_mtok_in: float = 0.0
    usd_per_mtok_out: float = 0.0

    def api_key(self) -> str:
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise MissingKey(
                f"environment variable {self.api_key_env} (API key for {self.model} at {self.base_url}) is not set"
            )
        return key

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.usd_per_mtok_in + completion_tokens * self.usd_per_mtok_out) / 1e6


@dataclass(frozen=True)
class Limits:
    concurrency: int = 8
    requests_per_minute: float | None = 500
    tokens_per_minute: float | None = 200_000
    max_retries: int = 6
    timeout_s: float = 60.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    spend_cap_usd: float | None = None


@dataclass(frozen=True)
class Call:
    """One request: a completions prompt (str) or chat messages, and one sample's settings."""

    prompt: str | tuple[tuple[str, str], ...]  # text, or ((role, content), ...)
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0
    sample_index: int = 0

    def prompt_chars(self) -> int:
        return len(self.prompt) if isinstance(self.prompt, str) else sum(len(c) + 8 for _, c in self.prompt)


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float  # what this response cost when it was bought (also when served from the cache)
    cached: bool = False
    attempts: int = 0  # HTTP requests made for it in this run (0 when cached)


@dataclass
class Usage:
    """Totals over one client's lifetime."""

    paid_calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0  # of every result returned, cached or not
    spent_usd: float = 0.0  # paid in this run
    retry_reasons: dict = field(default_factory=dict)


class APIClient:
    def __init__(self, endpoint: Endpoint, limits: Limits, cache: ResponseCache | None = None) -> None:
        if limits.concurrency < 1:
            raise ValueError(f"api concurrency must be >= 1, got {limits.concurrency}")
        self.endpoint, self.limits, self.cache = endpoint, limits, cache
        self.usage = Usage()
        self._key = endpoint.api_key()  # fails early, naming the variable (never the value)

    # ---- public -------------------------------------------------------------------------------
    def run(self, calls: list[Call]) -> list[Completion]:
        """Every call's completion, in order (blocking). Raises SpendCapReached with the partial
        results when the cap stops it, APIError when a call fails for good."""
        return _run_sync(self.complete_all(calls))

    async def complete_all(self, calls: list[Call]) -> list[Completion]:
        results: list[Completion | None] = [None] * len(calls)
        todo = []
        for i, call in enumerate(calls):
            hit = self._cached(call)
            if hit is not None:
                results[i] = hit
            else:
                todo.append(i)
        if todo:
            await self._fetch(calls, todo, results)
        return results  # type: ignore[return-value]

    # ---- internals ----------------------------------------------------------------------------
    def request_description(self, call: Call) -> dict:
        """What identifies a response (the cache key's input): no credentials."""
        d = asdict(call)
        d["prompt"] = call.prompt if isinstance(call.prompt, str) else [list(m) for m in call.prompt]
        return {
            "base_url": self.endpoint.base_url.rstrip("/"),
            "model": self.endpoint.model,
            "mode": self.endpoint.mode,
        } | d

    def _cached(self, call: Call) -> Completion | None:
        if self.cache is None:
            return None
        hit = self.cache.get(cache_key(self.request_description(call)))
        if hit is None:
            return None
        c = Completion(**hit, cached=True)
        self.usage.cache_hits += 1
        self._count(c)
        return c

    def _count(self, c: Completion) -> None:
        self.usage.prompt_tokens += c.prompt_tokens
        self.usage.completion_tokens += c.completion_tokens
        self.usage.cost_usd += c.cost_usd

    async def _fetch(self, calls: list[Call], todo: list[int], results: list) -> None:
        lim = self.limits
        self._sem = asyncio.Semaphore(lim.concurrency)
        self._requests = TokenBucket(lim.requests_per_minute)
        self._tokens = TokenBucket(lim.tokens_per_minute)
        self._reserved = 0.0
        self._stopped: str | None = None
        client = openai.AsyncOpenAI(
            api_key=self._key, base_url=self.endpoint.base_url, max_retries=0, timeout=lim.timeout_s
        )
        try:
            tasks = [asyncio.create_task(self._one(client, calls[i], i, results)) for i in todo]
            done = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await client.close()
        errors = [e for e in done if isinstance(e, BaseException)]
        if errors:
            raise errors[0]
        if self._stopped:
            got = sum(r is not None for r in results)
            raise SpendCapReached(f"{self._stopped}; {got} of {len(results)} results kept", results)

    async def _one(self, client, call: Call, index: int, results: list) -> None:
        worst_tokens = call.prompt_chars() + 16 + call.max_tokens  # a token is at least one character
        worst_usd = self.endpoint.cost(call.prompt_chars() + 16, call.max_tokens)
        async with self._sem:
            for attempt in range(self.limits.max_retries + 1):
                if self._stopped:
                    return
                await self._requests.take(1)
                await self._tokens.take(worst_tokens)
                cap = self.limits.spend_cap_usd
                if cap is not None and self.usage.spent_usd + self._reserved + worst_usd > cap:
                    self._stopped = (
                        f"spend cap ${cap:.4f} reached (spent ${self.usage.spent_usd:.4f}, "
                        f"next call could cost up to ${worst_usd:.4f})"
                    )
                    log.warning("%s: %s", self.endpoint.model, self._stopped)
                    return
                self._reserved += worst_usd
                try:
                    c = await self._send(client, call)
                except _Retryable as err:
                    self._reserved -= worst_usd
                    self.usage.retries += 1
                    self.usage.retry_reasons[err.reason] = self.usage.retry_reasons.get(err.reason, 0) + 1
                    if attempt == self.limits.max_retries:
                        self.usage.failures += 1
                        raise APIError(
                            f"{self.endpoint.model} at {self.endpoint.base_url}: gave up after "
                            f"{attempt + 1} attempts; last error: {err.reason}"
                        ) from None
                    await asyncio.sleep(self._delay(attempt, err.retry_after))
                    continue
                except BaseException:
                    self._reserved -= worst_usd
                    raise
                self._reserved -= worst_usd
                self._tokens.adjust(c.prompt_tokens + c.completion_tokens - worst_tokens)
                c.attempts = attempt + 1
                self.usage.paid_calls += 1
                self.usage.spent_usd += c.cost_usd
                self._count(c)
                if self.cache is not None:
                    desc = self.request_description(call)
                    self.cache.put(cache_key(desc), desc, _stored(c))
                results[index] = c
                return

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        cap = min(self.limits.backoff_max_s, self.limits.backoff_base_s * 2**attempt)
        backoff = cap / 2 + random.uniform(0, cap / 2)  # "equal jitter": never zero, never in lockstep
        return max(backoff, retry_after or 0.0)

    async def _send(self, client, call: Call) -> Completion:
        common = {
            "model": self.endpoint.model,
            "max_tokens": call.max_tokens,
            "temperature": call.temperature,
            "top_p": call.top_p,
            "seed": call.seed,
        }
        if call.stop:
            common["stop"] = list(call.stop)
        try:
            if self.endpoint.mode == "chat":
                messages = [{"role": r, "content": c} for r, c in call.prompt]
                resp = await client.chat.completions.create(messages=messages, **common)
                choice = resp.choices[0]
                text = choice.message.content or ""
            else:
                resp = await client.completions.create(prompt=call.prompt, **common)
                choice = resp.choices[0]
                text = choice.text or ""
            usage = resp.usage
            prompt_tokens, completion_tokens = int(usage.prompt_tokens), int(usage.completion_tokens)
            finish = str(choice.finish_reason or "stop")
        except openai.APIStatusError as err:
            status = err.status_code
            if status in RETRY_STATUS or status >= 500:
                raise _Retryable(f"HTTP {status}", _retry_after(err.response.headers)) from None
            raise APIError(
                f"{self.endpoint.model} at {self.endpoint.base_url}: HTTP {status}: {self._redact(err.message)}"
            ) from None
        except openai.APITimeoutError:
            raise _Retryable("timeout") from None
        except openai.APIConnectionError:
            raise _Retryable("connection error") from None
        except (
            openai.APIResponseValidationError,
            json.JSONDecodeError,
            AttributeError,
            IndexError,
            TypeError,
            ValueError,
        ) as err:
            raise _Retryable(f"malformed response ({type(err).__name__})") from None
        return Completion(
            text, finish, prompt_tokens, completion_tokens, self.endpoint.cost(prompt_tokens, completion_tokens)
        )

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


def _retry_after(headers) -> float | None:
    """Seconds asked for by ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _stored(c: Completion) -> dict:
    return {
        "text": c.text,
        "finish_reason": c.finish_reason,
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "cost_usd": c.cost_usd,
    }


def _run_sync(coro):
    """``asyncio.run`` that also works when the caller already has an event loop running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as err:  # re-raised in the caller's thread
            box["error"] = err

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
