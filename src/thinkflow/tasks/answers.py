"""Answer extraction and checking for maths benchmarks (MATH-500, GSM8K).

Text handling, all pure functions with linear work on any input:

- ``split_thinking(text)`` -> ``(thinking, answer | None)``: the answer is what follows the last closing
  thinking delimiter; an unfinished thinking block means no answer.
- ``last_boxed(text)``: the content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` (or ``\\boxed 5``).
- GSM8K numbers: ``hash_answer`` (after ``####``), ``boxed_number``, ``last_number``, each returning a canonical
  number string (``"1,234.50"`` -> ``"1234.5"``); ``extract_with(STRICT | LENIENT, text)`` tries them in
  order; ``numbers_equal`` compares two canonical numbers exactly.

``MathChecker`` checks a predicted answer against a gold LaTeX answer with ``math_verify`` (parse + verify):
the prediction's last ``\\boxed{}`` (or, without one, the whole text) against the gold; fractions and
decimals, radicals, intervals, tuples, sets, complex numbers, degrees, thousands separators and units or
``\\text{}`` as far as math-verify handles them. Every check is bounded in time from any thread:
math-verify's own timeouts use ``signal.alarm`` (main thread only), so the checks run in worker processes
(``python -P answers.py --worker``, JSON lines over pipes, math-verify's timeouts off) and the parent waits
at most ``timeout_s`` per item; past that it kills the worker, marks the item wrong with reason
``"timeout"``, starts a new worker and goes on with the rest of the batch. Obviously hostile answers (too
long, too deeply nested, powers or factorials with a huge number of digits such as ``10^{10^{10}}``) are
rejected before they reach a worker; that screen is a courtesy, the timeout is the guarantee. Workers run
with an address-space limit (``memory_limit_mb``), ignore SIGINT (the parent decides) and leave when the
parent does (stdin closes, or a watchdog sees the parent gone).

Cost (measured on this project's shared 2-core CPU box, Python 3.11, math-verify 0.9.0; load changed run to run):
worker start-up, spawn to ready (interpreter + importing math-verify/sympy), 0.27 s on a quiet machine, up to
~1.1 s under load. A check in a warm worker, pipe round trip included (~0.1 ms of it): integers, fractions
against decimals, radicals, complex numbers ~1-3 ms; polynomials ~12 ms; sets ~20 ms; intervals ~30-40 ms;
tuples ~50-60 ms (max seen 140 ms). A new worker's first checks pay sympy's warm-up: this module's test table
(43 mixed items) took 15-38 ms per item in a fresh worker, median 2.5 ms. Verdicts are cached on
(prediction's boxed answer or text, gold): a repeated check costs ~15 us. A timeout costs ``timeout_s`` and a
restart, whose start-up overlaps the caller (the new worker is spawned at once and awaited on next use, so
a check right after a timeout may wait for it).

Verdict reasons: ``None`` (checked: right or wrong), ``"no_answer"`` (nothing to check in the prediction),
``"gold_unparsed"``, ``"timeout"``, ``"too_long"``, ``"too_deep"``, ``"huge_number"``, ``"worker_died"``,
``"error"``. The prediction is the answer text (``split_thinking``'s answer, say: the checker does not look for
thinking); the gold is a bare LaTeX answer (``\\frac{1}{2}``) or one in ``\\boxed{}``. Decisions worth knowing: decimals count when equal after rounding to 6 places (math-verify's
``float_rounding``), so ``4.666667`` matches ``\\frac{14}{3}`` and ``4.6667`` does not; ``p - q`` is not
``q - p``; the order of a set does not matter, the order of a tuple or an interval's ends does.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import re
import select
import subprocess
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

__all__ = [
    "LENIENT",
    "STRATEGIES",
    "STRICT",
    "CheckerError",
    "MathChecker",
    "Verdict",
    "boxed_number",
    "canonical_number",
    "extract_with",
    "hash_answer",
    "last_boxed",
    "last_number",
    "numbers_equal",
    "split_thinking",
]

# ---------------------------------------------------------------------------------------------------------------
# Thinking blocks


def split_thinking(text: str, open: str = "<think>", close: str = "</think>") -> tuple[str, str | None]:
    """``(thinking, answer)``. The answer is the text after the LAST closing delimiter (stripped); None when a
    thinking block is left open (generation stopped while thinking). Without any delimiter, everything is
    answer. A closing delimiter before any opening one means the text started inside thinking (chat templates
    that put the opening delimiter in the prompt): everything before it is thinking. Delimiters do not nest:
    an opening delimiter inside a thinking block is text. A delimiter written in quotes or backticks
    (``"`<think>`"``) is a mention, not a delimiter; an unquoted opening delimiter after the last close is
    read as a new, unfinished block (no answer). Thinking is everything that is not answer, the pieces between
    delimiters stripped and joined by newlines.
    """
    if not open or not close or open == close:
        raise ValueError("split_thinking needs two different, non-empty delimiters")
    pattern = "|".join(re.escape(d) for d in sorted({open, close}, key=len, reverse=True))
    tokens = []  # (start, end, is_open) of delimiters that are not mentions
    for m in re.finditer(pattern, text):
        before = text[m.start() - 1] if m.start() else ""
        after = text[m.end()] if m.end() < len(text) else ""
        if before and before in _QUOTES or after and after in _QUOTES:
            continue
        tokens.append((m.start(), m.end(), m.group() == open))
    if not tokens:
        return "", text.strip()
    inside = not tokens[0][2]  # the first delimiter closes: we started inside thinking
    answer_start = 0
    for _, end, is_open in tokens:
        if is_open:
            inside = True  # (an opening delimiter inside thinking is just text)
        else:
            inside, answer_start = False, end  # a stray close outside a block also moves the answer on
    boundary = len(text) if inside else answer_start
    pieces, pos = [], 0
    for start, end, _ in tokens:
        if end > boundary:
            break
        pieces.append(text[pos:start])
        pos = end
    pieces.append(text[pos:boundary])
    thinking = "\n".join(piece.strip() for piece in pieces if piece.strip())
    return thinking, None if inside else text[answer_start:].strip()


_QUOTES = "`'\""

# ---------------------------------------------------------------------------------------------------------------
# \boxed{...}

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*")
_BRACE = re.compile(r"(?<!\\)[{}]")  # \{ and \} are literal braces, not grouping
_BARE_ARG = re.compile(r"[^\s$]+")


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` or ``\\fbox{...}`` (braces balanced, nested braces kept,
    ``\\{``/``\\}`` ignored when matching), or the token after ``\\boxed 5`` (up to a space or ``$``, trailing
    ``.,;:`` dropped); None without one. An unclosed box is skipped for the one before it. One linear pass
    whatever the input (100k unclosed braces included)."""
    boxes = list(_BOX.finditer(text))
    if not boxes:
        return None
    closing: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE.finditer(text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            closing[stack.pop()] = m.start()
    for box in reversed(boxes):
        start = box.end()
        if start < len(text) and text[start] == "{":
            if start in closing:
                return text[start + 1 : closing[start]].strip()
            continue
        bare = _BARE_ARG.match(text, start)
        if bare and (token := bare.group().rstrip(".,;:")):
            return token
    return None


# ---------------------------------------------------------------------------------------------------------------
# GSM8K-style numbers

_SIGNED_NUMBER = re.compile(r"(?:(?<![\w)\]}])-)?(?<![\d.])(?:\d{1,3}(?:,\d{3})+(?![\d,])|\d+)(?:\.\d+)?")
_UNIT_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mbox|textnormal)\s*\{[^{}]*\}")
_BOXED_JUNK = re.compile(r"\\[$%,!;: ]|[$%~]|\\(?:quad|qquad)\b")
_NUMBER_WITH_WORDS = re.compile(r"(-?\s*(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)\s*[A-Za-z ]*")


def canonical_number(number: str) -> str | None:
    """``"-$1,003.50"`` -> ``"-1003.5"`` (commas, ``$`` and spaces dropped; leading/trailing zeros trimmed;
    exact for any length); None when it is not a plain decimal number."""
    text = re.sub(r"[\s,$]", "", number.replace("\u2212", "-")).lstrip("+")
    sign = "-" if text.startswith("-") else ""
    whole, _, frac = text.removeprefix("-").partition(".")
    if not re.fullmatch(r"[0-9]*", whole) or not re.fullmatch(r"[0-9]*", frac) or not (whole or frac):
        return None
    whole, frac = whole.lstrip("0") or "0", frac.rstrip("0")
    out = f"{whole}.{frac}" if frac else whole
    return "0" if out == "0" else sign + out


def numbers_equal(a: str | None, b: str | None) -> bool:
    """Two numbers equal exactly (after ``canonical_number``); False if either is missing or not a number."""
    ca = canonical_number(a) if a is not None else None
    cb = canonical_number(b) if b is not None else None
    return ca is not None and ca == cb


def _numbers(text: str) -> list[str]:
    return _SIGNED_NUMBER.findall(text.replace("\\$", "").replace("$", "").replace("\u2212", "-"))


def hash_answer(text: str) -> str | None:
    """The first number after the LAST ``####``, on that line (GSM8K's reference format; the same rule as
    ``GSM8K.extract_answer``); None without one."""
    if "####" not in text:
        return None
    found = _numbers(text.rsplit("####", 1)[1].split("\n", 1)[0])
    return canonical_number(found[0]) if found else None


def boxed_number(text: str) -> str | None:
    """The number in the last ``\\boxed{}`` when that box holds just a number (units in words or ``\\text{}``,
    ``$``, ``%`` and thousands separators allowed: ``\\boxed{\\$1,200}``, ``\\boxed{18 \\text{ dollars}}``);
    None otherwise (no box, ``\\boxed{\\frac{1}{2}}``, ``\\boxed{x+1}``)."""
    content = last_boxed(text)
    if content is None:
        return None
    content = _UNIT_WRAPPERS.sub(" ", content.replace("{,}", ",").replace("\u2212", "-"))
    content = _BOXED_JUNK.sub(" ", content).strip()
    m = _NUMBER_WITH_WORDS.fullmatch(content)
    return canonical_number(m.group(1)) if m else None


def last_number(text: str) -> str | None:
    """The last number in the text (commas and ``$`` dropped; ``-`` counts as a sign only where it cannot be a
    subtraction: ``10-4`` gives ``4``, ``is -4`` gives ``-4``); None without one."""
    found = _numbers(text)
    return canonical_number(found[-1]) if found else None


STRATEGIES: dict[str, Callable[[str], str | None]] = {
    "hash_answer": hash_answer,
    "boxed_number": boxed_number,
    "last_number": last_number,
}
STRICT: tuple[str, ...] = ("hash_answer",)
LENIENT: tuple[str, ...] = ("hash_answer", "boxed_number", "last_number")


def extract_with(strategies: Sequence[str], text: str) -> tuple[str | None, str | None]:
    """``(answer, strategy name)`` from the first strategy (names from ``STRATEGIES``) that finds an answer;
    ``(None, None)`` when none does. Unknown names raise ValueError."""
    unknown = [strategies] if isinstance(strategies, str) else [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown answer strategies {unknown!r} (pass a list of names); known: {sorted(STRATEGIES)}")
    for name in strategies:
        if (answer := STRATEGIES[name](text)) is not None:
            return answer, name
    return None, None


# ---------------------------------------------------------------------------------------------------------------
# math-verify in worker processes


@dataclass(frozen=True, slots=True)
class Verdict:
    """``correct``; ``reason``: None when the answer was checked (right or wrong), else why it counts as wrong
    (see the module docstring); ``extracted``: the prediction's last boxed content when it has one, else the
    answer math-verify found in its text (at most 500 characters); None when there was none."""

    correct: bool
    reason: str | None = None
    extracted: str | None = None


class CheckerError(RuntimeError):
    """The checker cannot work: a worker would not start (math-verify missing, start-up timeout), or closed."""


_CACHEABLE = (None, "no_answer", "gold_unparsed")  # deterministic outcomes; timeouts and crashes are not cached


class MathChecker:
    """Checks predictions against gold LaTeX answers with math-verify in ``workers`` worker processes, each item
    bounded by ``timeout_s`` seconds from any thread. Use as a context manager or call ``close()``.

    ``check_many`` sends the batch's distinct uncached items to the workers (split between them), returns a
    ``Verdict`` per pair in order. Thread-safe: concurrent callers share the workers (a caller waits for a free
    one) and the verdict cache (``cache_size`` entries, LRU; 0 turns it off). ``screen=False`` sends even
    hostile-looking answers to the workers (the timeout still holds)."""

    def __init__(
        self,
        timeout_s: float = 2.0,
        *,
        workers: int = 1,
        cache_size: int = 100_000,
        startup_timeout_s: float = 60.0,
        max_chars: int = 20_000,
        max_depth: int = 50,
        max_digits: int = 100_000,
        memory_limit_mb: int | None = 2048,
        screen: bool = True,
    ) -> None:
        if timeout_s <= 0 or workers < 1:
            raise ValueError("MathChecker needs timeout_s > 0 and workers >= 1")
        self.timeout_s = timeout_s
        self.max_chars, self.max_depth, self.max_digits = max_chars, max_depth, max_digits
        self.screen = screen
        self._cache: OrderedDict[tuple[str, str], Verdict] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._workers = [_Worker(timeout_s, startup_timeout_s, memory_limit_mb) for _ in range(workers)]
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for w in self._workers:
            self._idle.put(w)
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self.stats = {"checks": 0, "cache_hits": 0, "screened": 0, "timeouts": 0}

    # -- public API ------------------------------------------------------------------------------------------

    def check(self, pred: str | None, gold: str) -> Verdict:
        """One prediction (the answer text, e.g. ``split_thinking``'s answer; None counts as no answer)."""
        return self.check_many([(pred, gold)])[0]

    def check_many(self, pairs: Sequence[tuple[str | None, str]]) -> list[Verdict]:
        """A verdict per ``(prediction, gold)`` pair, in order."""
        if self._closed:
            raise CheckerError("MathChecker is closed")
        verdicts: list[Verdict | None] = [None] * len(pairs)
        pending: dict[tuple[str, str], list[int]] = {}
        boxes: dict[tuple[str, str], str] = {}  # the prediction's boxed content, shown as extracted when there is one
        for i, (pred, gold) in enumerate(pairs):
            item, verdict, boxed = self._prepare(pred, gold)
            if verdict is None and item in pending:
                pending[item].append(i)
                continue
            if verdict is None:
                verdict = self._cache_get(item)
            if verdict is None:
                pending[item] = [i]
                if boxed is not None:
                    boxes[item] = boxed[:500]
            else:
                verdicts[i] = verdict
        items = list(pending)
        if items:
            for item, verdict in zip(items, self._run(items), strict=True):
                if item in boxes and verdict.reason is None:
                    verdict = Verdict(verdict.correct, None, boxes[item])
                self._cache_put(item, verdict)
                for i in pending[item]:
                    verdicts[i] = verdict
        with self._lock:
            self.stats["checks"] += len(pairs)
            self.stats["timeouts"] += sum(v is not None and v.reason == "timeout" for v in verdicts)
        return verdicts  # type: ignore[return-value]

    def warm(self) -> float:
        """Start every worker now and wait until each is ready (the first check then skips start-up); the
        seconds it took."""
        t0 = time.monotonic()
        for w in self._workers:
            w.ensure_ready()
        return time.monotonic() - t0

    @property
    def restarts(self) -> int:
        """Worker processes started after the first one of each worker (timeouts, crashes)."""
        return sum(max(0, w.starts - 1) for w in self._workers)

    def close(self) -> None:
        """Stop the workers (killed: checks in flight end with an error); the checker cannot be used after."""
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        for w in self._workers:
            w.close()

    def __enter__(self) -> MathChecker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------------------

    def _prepare(self, pred: str | None, gold: str) -> tuple[tuple[str, str], Verdict | None, str | None]:
        """The item a worker checks (``\\boxed{}`` prediction or the whole text, boxed gold) or a verdict reached
        without one, and the prediction's boxed content."""
        if pred is None or not pred.strip():
            return ("", ""), Verdict(False, "no_answer", None), None
        if not gold or not gold.strip():
            return ("", ""), Verdict(False, "gold_unparsed", None), None
        boxed = last_boxed(pred)
        cand = pred.strip() if boxed is None else "\\boxed{" + boxed + "}"
        gold_box = last_boxed(gold) if _BOX.search(gold) else None
        gold_item = "\\boxed{" + (gold.strip() if gold_box is None else gold_box) + "}"
        if self.screen and (reason := self._screen(cand) or self._screen(gold_item)):
            with self._lock:
                self.stats["screened"] += 1
            shown = boxed if boxed is not None and len(boxed) <= 500 else None
            return ("", ""), Verdict(False, reason, shown), boxed
        return (cand, gold_item), None, boxed

    def _screen(self, text: str) -> str | None:
        if len(text) > self.max_chars:
            return "too_long"
        if _max_depth(text) > self.max_depth:
            return "too_deep"
        if _huge_number(text, self.max_digits):
            return "huge_number"
        return None

    def _cache_get(self, item: tuple[str, str]) -> Verdict | None:
        if not self._cache_size:
            return None
        key = _cache_key(item)
        with self._lock:
            verdict = self._cache.get(key)
            if verdict is not None:
                self._cache.move_to_end(key)
                self.stats["cache_hits"] += 1
            return verdict

    def _cache_put(self, item: tuple[str, str], verdict: Verdict) -> None:
        if not self._cache_size or verdict.reason not in _CACHEABLE:
            return
        key = _cache_key(item)
        with self._lock:
            self._cache[key] = verdict
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _run(self, items: list[tuple[str, str]]) -> list[Verdict]:
        n = min(len(self._workers), len(items))
        if n == 1:
            return self._on_a_worker(items)
        size = -(-len(items) // n)
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(len(self._workers), thread_name_prefix="math-checker")
            executor = self._executor
        return [v for chunk in executor.map(self._on_a_worker, chunks) for v in chunk]

    def _on_a_worker(self, items: list[tuple[str, str]]) -> list[Verdict]:
        worker = self._idle.get()
        try:
            if self._closed:
                raise CheckerError("MathChecker is closed")
            return worker.run(items)
        finally:
            self._idle.put(worker)


def _cache_key(item: tuple[str, str]) -> tuple[str, str]:
    """Long texts (unboxed predictions) are keyed by digest, so a full cache stays small."""
    pred, gold = (s if len(s) <= 256 else "sha256:" + hashlib.sha256(s.encode()).hexdigest() for s in item)
    return pred, gold


def _max_depth(text: str) -> int:
    depth = deepest = 0
    for ch in text:
        if ch in "({[":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")}]" and depth:
            depth -= 1
    return deepest


_POWER = re.compile(r"(\d+(?:\.\d+)?)?\s*(?:\^|\*\*)\s*")
_FACTORIAL = re.compile(r"(\d+)\s*!")
_TOWER = re.compile(r"[\d.\s{}()^*]+")


def _huge_number(text: str, max_digits: int) -> bool:
    """A numeric power or factorial with more than ``max_digits`` digits (``10^{10^{10}}``, ``9^{99999999}``,
    ``100000!``); a symbolic base counts as one digit (``x^{10^{10}}``), a symbolic exponent is not judged."""
    for m in _POWER.finditer(text):
        exponent = _operand_log10(text, m.end())
        if exponent is None:
            continue
        base = float(m.group(1)) if m.group(1) else 10.0
        if exponent > 15 or 10**exponent * max(math.log10(base), 0.0) > max_digits:
            return True
    for m in _FACTORIAL.finditer(text):
        n = int(m.group(1)) if len(m.group(1)) < 12 else 10**12
        if n > 1 and n * math.log10(n) > max_digits:
            return True
    return False


def _operand_log10(text: str, i: int) -> float | None:
    """log10 of the numeric value of the power operand at ``text[i]`` (a number, or a ``{...}``/``(...)`` group
    holding a number or a numeric power tower); None when it is not numeric."""
    if i >= len(text):
        return None
    if text[i] in "{(":
        depth, j = 0, i
        while j < len(text):
            if text[j] in "{(":
                depth += 1
            elif text[j] in "})":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        body = text[i + 1 : j]
    else:
        m = re.match(r"\d+(?:\.\d+)?", text[i:])
        if not m:
            return None
        body = m.group()
    if not body.strip() or not _TOWER.fullmatch(body):
        return None
    try:  # a tower a^b^c, read right-associatively (an upper bound for ((a^b)^c))
        numbers = [float(x) for x in re.split(r"\^|\*\*", re.sub(r"[\s{}()]", "", body))]
    except ValueError:
        return None
    log = math.log10(max(numbers[-1], 1.0))
    for base in reversed(numbers[:-1]):
        if log > 15:
            return log
        log = 10**log * math.log10(max(base, 1.0))
    return log


# ---------------------------------------------------------------------------------------------------------------
# Worker processes: the parent side


class _Worker:
    """One worker process, restarted as needed; used by one thread at a time (MathChecker's idle queue)."""

    def __init__(self, timeout_s: float, startup_timeout_s: float, memory_limit_mb: int | None) -> None:
        self.timeout_s = timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.memory_limit_mb = memory_limit_mb
        self.proc: subprocess.Popen | None = None
        self.ready = False
        self.starts = 0
        self.startup_s: float | None = None  # the last start-up, spawn to ready
        self._spawned_at = 0.0
        self._buf = b""
        self._closed = False
        self._finalizer: weakref.finalize | None = None

    def spawn(self) -> None:
        if self._closed:
            raise CheckerError("MathChecker is closed")
        cmd = [sys.executable, "-P", os.path.abspath(__file__), "--worker", str(os.getpid())]
        cmd.append(str(self.memory_limit_mb or 0))
        self._spawned_at = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self._finalizer = weakref.finalize(self, _kill, self.proc)
        self.ready, self._buf = False, b""
        self.starts += 1

    def ensure_ready(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.kill()
            self.spawn()
        if self.ready:
            return
        line = self._readline(self._spawned_at + self.startup_timeout_s)
        if not isinstance(line, bytes) or not line.startswith(b'{"ready": true'):
            detail = "timed out" if line == "timeout" else "exited" if line == "eof" else f"said {line[:200]!r}"
            self.kill()
            raise CheckerError(
                f"math-verify worker {detail} before it was ready (start-up limit {self.startup_timeout_s:g}s); "
                "is math-verify[antlr4_9_3] installed?"
            )
        self.ready = True
        self.startup_s = time.monotonic() - self._spawned_at

    def run(self, items: list[tuple[str, str]]) -> list[Verdict]:
        out: list[Verdict] = []
        retried, write_failures = -1, 0
        while len(out) < len(items):
            self.ensure_ready()
            try:
                _write_all(self.proc.stdin.fileno(), (json.dumps({"items": items[len(out) :]}) + "\n").encode())
            except OSError as err:  # died while idle: start another
                self.kill()
                write_failures += 1
                if write_failures >= 3:
                    raise CheckerError(f"math-verify worker keeps dying before it reads its input ({err})") from err
                continue
            while len(out) < len(items):
                line = self._readline(time.monotonic() + self.timeout_s)
                if isinstance(line, bytes):
                    r = json.loads(line)
                    out.append(Verdict(r["correct"], r["reason"], r["extracted"]))
                    continue
                self.kill()
                self.spawn()  # start-up overlaps whatever the caller does next
                if line == "timeout":
                    out.append(Verdict(False, "timeout", None))
                elif retried == len(out):  # died on the same item twice
                    out.append(Verdict(False, "worker_died", None))
                else:
                    retried = len(out)
                break
        return out

    def _readline(self, deadline: float) -> bytes | str:
        """The next line from the worker, or "timeout" / "eof"."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                return "timeout"
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return "eof"
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def kill(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # kills and reaps self.proc
        self.proc, self.ready, self._buf = None, False, b""

    def close(self) -> None:
        self._closed = True
        self.kill()


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for f in (proc.stdin, proc.stdout):
        if f is not None:
            f.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# ---------------------------------------------------------------------------------------------------------------
# Worker processes: the worker side (this file run as a script; it imports no thinkflow module)


def _worker_main(parent_pid: int, memory_limit_mb: int) -> None:
    import logging
    import resource
    import signal

    protocol_fd = os.dup(1)
    os.dup2(2, 1)  # anything printed by libraries goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which stops us
    if memory_limit_mb:
        limit = memory_limit_mb << 20
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit if hard == resource.RLIM_INFINITY else min(limit, hard)))

    def watchdog() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watchdog, daemon=True).start()
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # "timeout disabled" warnings: we time out ourselves
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    gold_config = [LatexExtractionConfig(), ExprExtractionConfig()]
    pred_config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    golds: dict[str, list] = {}

    def check(cand: str, gold: str) -> dict:
        if (g := golds.get(gold)) is None:
            if len(golds) > 10_000:
                golds.clear()
            g = golds[gold] = parse(gold, gold_config, parsing_timeout=None)
        if not g:
            return {"correct": False, "reason": "gold_unparsed", "extracted": None}
        p = parse(cand, pred_config, parsing_timeout=None)
        if not p:
            return {"correct": False, "reason": "no_answer", "extracted": None}
        shown = p[-1] if isinstance(p[-1], str) else None
        ok = bool(verify(g, p, timeout_seconds=None))
        return {"correct": ok, "reason": None, "extracted": shown[:500] if shown is not None else None}

    with open(protocol_fd, "w", encoding="ascii", newline="\n") as protocol:
        protocol.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
        protocol.flush()
        for line in sys.stdin.buffer:
            for cand, gold in json.loads(line)["items"]:
                try:
                    result = check(cand, gold)
                except Exception as err:  # math-verify catches its own; this is MemoryError, RecursionError, ...
                    print(f"math-verify worker: {type(err).__name__} on an item", file=sys.stderr)
                    result = {"correct": False, "reason": "error", "extracted": None}
                protocol.write(json.dumps(result) + "\n")
                protocol.flush()


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    _worker_main(int(sys.argv[2]), int(sys.argv[3]))
