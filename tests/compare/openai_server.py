"""A small OpenAI-compatible HTTP server on 127.0.0.1 with scripted answers and fault injection.

Serves ``POST /v1/chat/completions``, ``POST /v1/completions`` and ``GET /v1/models``. Answers
are scripted: for a prompt containing a known question it answers ``#### <answer>``, correct
with probability ``accuracy`` (decided by a hash of the prompt, the seed and the temperature, so
greedy calls are deterministic and samples differ), else off by one. Every request passes
through a fault plan (cycled): ``None`` (answer), ``"429"`` (with Retry-After), ``"500"``,
``"slow"`` (sleeps past the client's timeout), ``"malformed"`` (200 with a broken JSON body),
``"drop"`` (closes the connection without a response).

The server keeps the books a provider would: ``paid[key]`` counts answered (billed) requests
per request identity, ``arrivals`` the arrival time of every request (for rate-limit checks),
``spent_usd`` the bill at the configured prices.

    python -m tests.compare.openai_server --port 8011 --latency 0.2     # standalone
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_QUESTION = re.compile(r"Question: (.*?)\n", re.S)


class ScriptedOpenAIServer:
    def __init__(
        self,
        answers: dict[str, str] | None = None,  # question text -> correct answer
        accuracy: float = 0.8,
        latency_s: float = 0.0,
        faults: list[str | None] | None = None,
        slow_s: float = 3.0,
        retry_after_s: float = 0.2,
        api_key: str | None = None,
        usd_per_mtok_in: float = 0.0,
        usd_per_mtok_out: float = 0.0,
        port: int = 0,
        delim: str = "####",  # the task's answer delimiter
        respond=None,  # (prompt, seed, temperature) -> answer text: scripts any other task
    ) -> None:
        self.delim, self.respond = delim, respond
        self.answers, self.accuracy, self.latency_s = answers or {}, accuracy, latency_s
        self.faults, self.slow_s, self.retry_after_s = list(faults or [None]), slow_s, retry_after_s
        self.api_key, self.prices = api_key, (usd_per_mtok_in, usd_per_mtok_out)
        self.paid: Counter = Counter()
        self.faulted: Counter = Counter()
        self.arrivals: list[float] = []
        self.requests: list[dict] = []  # every authorised request body, in arrival order
        self.spent_usd = 0.0
        self.unauthorized = 0
        self._n = 0
        self._busy = 0  # requests being handled now
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @property
    def duplicates(self) -> int:
        return sum(c - 1 for c in self.paid.values() if c > 1)

    def start(self) -> ScriptedOpenAIServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> ScriptedOpenAIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until no request is being handled: a request that arrived before its client died is still
        answered (and billed) after the client is gone, ``latency_s`` later."""
        deadline = time.monotonic() + timeout
        while self._busy:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self._busy} requests still being handled after {timeout:g} s")
            time.sleep(0.01)

    def max_in_window(self, seconds: float) -> int:
        """Most requests that arrived within any window of ``seconds``."""
        t, best, j = sorted(self.arrivals), 0, 0
        for i in range(len(t)):
            while t[i] - t[j] > seconds:
                j += 1
            best = max(best, i - j + 1)
        return best

    # ---- answering --------------------------------------------------------------------------
    def answer(self, prompt: str, seed: int, temperature: float) -> str:
        if self.respond is not None:
            return self.respond(prompt, seed, temperature)
        # the known question that occurs last in the prompt (few-shot prompts show solved ones first)
        where = {q: prompt.rfind(q) for q in self.answers}
        question = max(where, key=where.get, default=None)
        if question is None or where[question] < 0:
            found = _QUESTION.findall(prompt)
            question = found[-1].strip() if found else prompt.strip()
        want = self.answers.get(question)
        h = hashlib.sha256(f"{question}|{seed if temperature > 0 else 0}|{temperature}".encode()).digest()
        u = int.from_bytes(h[:8], "big") / 2**64
        if want is None:
            return f"I do not know.\n{self.delim} 0"
        got = want if u < self.accuracy else str(int(float(want)) + 1 + int(u * 3))
        return f"Let me work it out step by step.\n{self.delim} {got}"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                self._json(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})

            def do_POST(self) -> None:
                with server._lock:
                    server._busy += 1
                try:
                    self._post()
                finally:
                    with server._lock:
                        server._busy -= 1

            def _post(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                with server._lock:
                    server.arrivals.append(time.monotonic())
                    fault = server.faults[server._n % len(server.faults)]
                    server._n += 1
                if server.api_key and self.headers.get("authorization") != f"Bearer {server.api_key}":
                    with server._lock:
                        server.unauthorized += 1
                    return self._json(401, {"error": {"message": "invalid api key", "type": "auth"}})
                with server._lock:
                    server.requests.append(body)
                if server.latency_s:
                    time.sleep(server.latency_s)
                if fault:
                    with server._lock:
                        server.faulted[fault] += 1
                if fault == "429":
                    return self._json(
                        429, {"error": {"message": "rate limited"}}, {"retry-after": f"{server.retry_after_s:g}"}
                    )
                if fault == "500":
                    return self._json(500, {"error": {"message": "internal error"}})
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fault == "slow":
                    time.sleep(server.slow_s)
                    self.close_connection = True
                    return
                chat = self.path.endswith("/chat/completions")
                prompt = "\n".join(m["content"] for m in body["messages"]) if chat else body["prompt"]
                text = server.answer(prompt, int(body.get("seed") or 0), float(body.get("temperature", 1.0)))
                for stop in body.get("stop") or []:  # like the real APIs: the text ends before a stop string
                    text = text.split(stop, 1)[0]
                usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                if fault == "malformed":
                    return self._raw(200, b'{"id": "cmpl-1", "choices": [{"text": "trunc')
                key = hashlib.sha256(
                    json.dumps(
                        [self.path, prompt, body.get("seed"), body.get("temperature"), body.get("max_tokens")]
                    ).encode()
                ).hexdigest()
                cost = (usage["prompt_tokens"] * server.prices[0] + usage["completion_tokens"] * server.prices[1]) / 1e6
                with server._lock:
                    server.paid[key] += 1
                    server.spent_usd += cost
                choice = {"index": 0, "finish_reason": "stop", "logprobs": None}
                choice |= {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
                self._json(
                    200,
                    {
                        "id": "cmpl-x",
                        "object": "chat.completion" if chat else "text_completion",
                        "created": int(time.time()),
                        "model": body.get("model", "scripted"),
                        "choices": [choice],
                        "usage": usage,
                    },
                )

            def _json(self, status: int, payload: dict, headers: dict | None = None) -> None:
                self._raw(status, json.dumps(payload).encode(), headers)

            def _raw(self, status: int, data: bytes, headers: dict | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--accuracy", type=float, default=0.8)
    ap.add_argument("--answers", help="GSM8K-style JSONL (question, answer '... #### N') to script answers from")
    args = ap.parse_args()
    answers = {}
    if args.answers:
        with open(args.answers) as fh:
            for line in fh:
                row = json.loads(line)
                answers[row["question"].strip()] = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
    server = ScriptedOpenAIServer(answers, args.accuracy, args.latency, port=args.port)
    print(f"scripted OpenAI-compatible server at {server.base_url} ({len(answers)} scripted answers)", flush=True)
    random.seed(0)
    server.httpd.serve_forever()


if __name__ == "__main__":
    main()
