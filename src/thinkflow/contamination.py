"""Test-set contamination: do training texts contain evaluation problems?

The check is n-gram overlap after normalisation (GPT-3's recipe): both sides are lowercased,
punctuation and LaTeX markup are dropped, whitespace is collapsed, and a training text is
flagged when it shares at least one ``n``-gram (13 words by default) with an evaluation
problem. Problems shorter than ``n`` tokens have no ``n``-gram: they are matched by exact
equality of the normalised texts instead, which is the right test for synthetic prompts such
as ``0347*6=`` (a 13-gram test could never see them, and a substring test would flag every
trace that happens to compute ``12+7``). A short problem *embedded* in a longer training text
is therefore not caught; check the training problems themselves (the ``question`` field,
``check_training_problems``), not whole transcripts, for short tasks.

The evaluation side is indexed once (hashed n-grams in a dict), so a training text costs one
tokenisation plus one set intersection: ~100k texts take seconds.

CLI (CPU, seconds)::

    python -m thinkflow.contamination --train ../shared/datasets/gsm8k/train.jsonl \\
        --eval ../shared/datasets/gsm8k/test.jsonl --eval ../shared/datasets/math500/test.jsonl
    python -m thinkflow.contamination --train data/sft --eval ../shared/datasets/math500 \\
        --action drop --out data/sft_clean.jsonl --mlflow-run RUN_ID --tracking-uri sqlite:///$PWD/mlruns/mlflow.db

Inputs are JSONL files or directories of them; the text fields are picked from known names
(``question``, ``problem``, ``prompt``, ...; ``--field`` overrides; answers and solutions are
not checked). Exit status: 0; 1 when ``--action fail`` finds an overlap or ``--action drop``
would drop every row; 2 for unreadable input or bad arguments.

Measured on GSM8K's own splits (2 CPU cores): index over the 1,319 test questions plus the
check of the 7,473 train questions ~0.3-0.6 s. Four train questions share a 13-gram with
three test questions; none is a copy: they are the same templates with other names and
numbers (e.g. train 20 / test 632, "bought stamps at the post office ...").
"""

from __future__ import annotations

import argparse
import bisect
import json
import re
import sys
import time
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_N = 13
ACTIONS = ("report", "drop", "fail")
# Fields that hold a problem, in the order they are looked for; answers/solutions are not checked.
KNOWN_FIELDS = ("question", "problem", "prompt", "instruction", "input", "text", "content", "messages")
ID_FIELDS = ("unique_id", "id", "problem_id", "task_id")
MAX_EXAMPLES = 5

# Patterns start with their literal so the regex engine can skip ahead (a leading lookbehind is ~5x slower).
# LaTeX that changes layout, not content: \left( -> (, \text{cm} -> cm, \dfrac -> frac, \$ -> $.
_LATEX_NOISE = re.compile(
    r"\\(?:left|right|[bB]igg?[lr]?|displaystyle|textstyle|mathrm|mathbf|mathit|text(?:bf|it|rm)?|operatorname"
    r"|quad|qquad|[,;:! ])(?![a-zA-Z])"
)
_LATEX_FRAC = re.compile(r"\\[dt]frac(?![a-zA-Z])")
_APOSTROPHE = re.compile(r"['\u2019](?<=\w.)(?=\w)")  # janet's == janet’s == janets
_THOUSANDS = re.compile(r",(?<=\d,)(?=\d{3}(?!\d))")  # 1,000 == 1000
_WORD_HYPHEN = re.compile(r"-(?<=[^\W\d_]-)(?=[^\W\d_])")  # two-thirds == two thirds; 16-3 keeps its minus
# Tokens: numbers (with decimals), runs of letters, and the operators that tell 0347+6= from 0347*6=.
_TOKEN = re.compile(r"\d+(?:\.\d+)*|[^\W\d_]+|[-+*/=<>^%\u00d7\u00f7]")


class ContaminationError(ValueError):
    """Training data overlaps an evaluation set (action ``fail``), or dropping it left nothing."""


def normalize(text: str) -> list[str]:
    """Word tokens of ``text``: NFKC, lowercase, LaTeX layout and punctuation gone, numbers and
    arithmetic operators kept. Whitespace, case, quotes, ``$``, braces and ``\\left``/``\\right``
    do not change the result."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _LATEX_FRAC.sub(" frac ", _LATEX_NOISE.sub(" ", text))
    text = _WORD_HYPHEN.sub(" ", _THOUSANDS.sub("", _APOSTROPHE.sub("", text)))
    return _TOKEN.findall(text)


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    """All contiguous ``n``-token windows, in order (none when there are fewer than ``n`` tokens)."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


@dataclass(frozen=True)
class Overlap:
    """One evaluation problem found in a training text."""

    task: str
    problem: int  # position in the task's problem list (row number of its file)
    problem_id: str  # its id field (MATH-500's unique_id) or the position as text
    kind: str  # "ngram" or "exact" (problem shorter than n tokens)
    matched: int  # distinct n-grams of the problem found in the text (1 for exact)
    total: int  # distinct n-grams of the problem (1 for exact)
    snippet: str  # the first shared n-gram, normalised (the whole problem for exact)


@dataclass(frozen=True)
class _Entry:
    task: str
    index: int
    id: str
    total: int


class EvalIndex:
    """Hashed n-grams of the evaluation problems, built once and queried per training text."""

    def __init__(
        self, n: int, entries: list[_Entry], grams: dict[int, tuple[int, ...]], exact: dict[str, tuple[int, ...]]
    ):
        self.n = n
        self.entries = entries
        self._grams = grams  # hash(n-gram) -> entry numbers; str hashes are salted per process: not saved
        self._exact = exact  # normalised short problem -> entry numbers
        self.tasks: dict[str, int] = {}
        for e in entries:
            self.tasks[e.task] = self.tasks.get(e.task, 0) + 1

    @classmethod
    def build(
        cls, problems: dict[str, list[str]], n: int = DEFAULT_N, ids: dict[str, list[str]] | None = None
    ) -> EvalIndex:
        """``problems``: task name -> problem texts; ``ids`` (optional, same shape): their ids."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        entries: list[_Entry] = []
        grams: dict[int, list[int]] = {}
        exact: dict[str, list[int]] = {}
        for task, texts in problems.items():
            task_ids = (ids or {}).get(task)
            if task_ids is not None and len(task_ids) != len(texts):
                raise ValueError(f"{task}: {len(task_ids)} ids for {len(texts)} problems")
            for i, text in enumerate(texts):
                tokens = normalize(text)
                number = len(entries)
                hashes = {hash(g) for g in ngrams(tokens, n)}
                for h in hashes:
                    grams.setdefault(h, []).append(number)
                if not hashes and tokens:  # shorter than n: exact match only
                    exact.setdefault(" ".join(tokens), []).append(number)
                pid = str(task_ids[i]) if task_ids is not None else str(i)
                entries.append(_Entry(task, i, pid, max(len(hashes), 1) if tokens else 0))
        return cls(n, entries, {h: tuple(v) for h, v in grams.items()}, {k: tuple(v) for k, v in exact.items()})

    def __len__(self) -> int:
        return len(self.entries)

    def find(self, text: str) -> list[Overlap]:
        """The evaluation problems ``text`` overlaps, most-overlapping first."""
        tokens = normalize(text)
        found: dict[int, tuple[set[int], int]] = {}  # entry -> (matched hashes, first position)
        if len(tokens) >= self.n:
            hashes = [hash(g) for g in ngrams(tokens, self.n)]
            if not self._grams.keys().isdisjoint(hashes):  # the common case (clean text) stops here
                for pos, h in enumerate(hashes):
                    for number in self._grams.get(h, ()):
                        found.setdefault(number, (set(), pos))[0].add(h)
        out = [
            self._overlap(number, "ngram", len(matched), " ".join(tokens[pos : pos + self.n]))
            for number, (matched, pos) in found.items()
        ]
        key = " ".join(tokens)
        out += [self._overlap(number, "exact", 1, key) for number in self._exact.get(key, ())]
        return sorted(out, key=lambda o: (-o.matched / o.total, o.task, o.problem))

    def _overlap(self, number: int, kind: str, matched: int, snippet: str) -> Overlap:
        e = self.entries[number]
        return Overlap(e.task, e.index, e.id, kind, matched, 1 if kind == "exact" else e.total, snippet)


@dataclass
class SourceReport:
    """What one training source contained."""

    source: str
    checked: int = 0
    contaminated: int = 0
    hits: dict[str, int] = field(default_factory=dict)  # eval task -> contaminated texts overlapping it
    problems_hit: dict[str, list[int]] = field(default_factory=dict)  # eval task -> distinct problems found, sorted
    flagged: list[int] = field(default_factory=list)  # positions (in this source) of contaminated texts
    examples: list[dict] = field(default_factory=list)  # the first MAX_EXAMPLES, with their overlaps


@dataclass
class Report:
    n: int
    eval_tasks: dict[str, int]  # eval task -> problems indexed
    sources: dict[str, SourceReport] = field(default_factory=dict)
    kept: list[int] | None = None  # check_training_problems: positions of the clean texts

    @property
    def checked(self) -> int:
        return sum(s.checked for s in self.sources.values())

    @property
    def contaminated(self) -> int:
        return sum(s.contaminated for s in self.sources.values())

    def add(self, source: str, overlaps: list[Overlap], text: str) -> None:
        """Record one training text (its position is the count of texts seen from ``source``)."""
        rep = self.sources.setdefault(source, SourceReport(source))
        position = rep.checked
        rep.checked += 1
        if not overlaps:
            return
        rep.contaminated += 1
        rep.flagged.append(position)
        for task in dict.fromkeys(o.task for o in overlaps):
            rep.hits[task] = rep.hits.get(task, 0) + 1
        for o in overlaps:
            problems = rep.problems_hit.setdefault(o.task, [])
            if o.problem not in problems:
                bisect.insort(problems, o.problem)
        if len(rep.examples) < MAX_EXAMPLES:
            rep.examples.append(
                {"position": position, "text": text[:300], "overlaps": [asdict(o) for o in overlaps[:3]]}
            )

    def to_dict(self) -> dict:
        out = asdict(self)
        return out | {"checked": self.checked, "contaminated": self.contaminated}

    def table(self) -> str:
        rows = [("train source", "rows", "contaminated", "eval task hit (rows / distinct problems)")]
        for rep in self.sources.values():
            hit = ", ".join(f"{t} ({c} / {len(rep.problems_hit[t])})" for t, c in rep.hits.items()) or "-"
            rows.append((rep.source, str(rep.checked), str(rep.contaminated), hit))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}" for r in rows]
        evals = ", ".join(f"{t} ({k})" for t, k in self.eval_tasks.items())
        return "\n".join([*lines, f"eval: {evals}; {self.n}-grams, exact match below {self.n} tokens"])

    def describe(self, limit: int = 3) -> str:
        """The first few overlaps in words, for error messages."""
        parts = []
        for rep in self.sources.values():
            for ex in rep.examples[: limit - len(parts)]:
                o = ex["overlaps"][0]
                how = "exact match" if o["kind"] == "exact" else f"{o['matched']}/{o['total']} {self.n}-grams"
                parts.append(
                    f"{rep.source}[{ex['position']}] overlaps {o['task']} problem {o['problem_id']} ({how}: {o['snippet']!r})"
                )
        more = self.contaminated - len(parts)
        return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def check(train_texts: Iterable[tuple[str, str]], index: EvalIndex, progress: bool = False) -> Report:
    """``train_texts``: (source name, text) pairs. Positions in the report count per source."""
    report = Report(index.n, dict(index.tasks))
    if progress:
        from tqdm import tqdm

        train_texts = tqdm(train_texts, desc="contamination", unit="text", file=sys.stderr)
    for source, text in train_texts:
        report.add(source, index.find(text), text)
    return report


def check_training_problems(
    train: list[str], eval_sets: dict[str, list[str]], n: int = DEFAULT_N, action: str = "report"
) -> Report:
    """Check a training stage's problems against the evaluation sets before it trains on them.

    ``report`` returns the report; ``fail`` raises ``ContaminationError`` naming the overlaps;
    ``drop`` returns it with ``kept`` = positions of the clean problems (raises when none is left).
    ``kept`` is filled for every action."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
    report = check((("train", t) for t in train), EvalIndex.build(eval_sets, n=n))
    flagged = set(report.sources["train"].flagged) if train else set()
    report.kept = [i for i in range(len(train)) if i not in flagged]
    if action == "fail" and report.contaminated:
        raise ContaminationError(
            f"{report.contaminated} of {len(train)} training problems overlap the evaluation sets: {report.describe()}"
        )
    if action == "drop" and train and not report.kept:
        raise ContaminationError(
            f"dropping contaminated problems removed all {len(train)} training problems: {report.describe()}"
        )
    return report


# ---------------------------------------------------------------------------------------------- CLI


class InputError(ValueError):
    """A training or evaluation file the CLI cannot read (exit status 2, like a usage error)."""


@dataclass
class _Source:
    name: str
    files: list[Path]


def _sources(args: list[str]) -> list[_Source]:
    """``PATH`` or ``NAME=PATH``; a file is named ``<parent>/<stem>`` (gsm8k/test), a directory by itself."""
    out: list[_Source] = []
    for arg in args:
        name, _, raw = arg.partition("=") if "=" in arg and not Path(arg).exists() else ("", "", arg)
        path = Path(raw)
        if path.is_dir():
            files = sorted(path.rglob("*.jsonl"))
            if not files:
                raise InputError(f"no .jsonl files under {path}")
            name = name or path.name
        elif path.is_file():
            files, name = [path], name or f"{path.resolve().parent.name}/{path.stem}"
        else:
            raise InputError(f"{path} does not exist")
        taken = {s.name for s in out}
        base, k = name, 2
        while name in taken:
            name, k = f"{base}#{k}", k + 1
        out.append(_Source(name, files))
    return out


def _rows(files: list[Path]) -> Iterator[tuple[str, dict, str]]:
    """(where, row, raw line) for every non-blank line."""
    for file in files:
        with open(file, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise InputError(f"{file}:{lineno} is not JSON ({err})") from err
                if not isinstance(row, dict):
                    raise InputError(f"{file}:{lineno} is not a JSON object")
                yield f"{file}:{lineno}", row, line.rstrip("\n")


def _texts(row: dict, fields: tuple[str, ...], where: str) -> list[str]:
    """The problem texts of a row: every listed field present (chat ``messages``: each content)."""
    texts = []
    for name in fields:
        value = row.get(name)
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):  # [{"role": ..., "content": ...}, ...]
            texts += [m["content"] for m in value if isinstance(m, dict) and isinstance(m.get("content"), str)]
    if not texts:
        raise InputError(f"{where} has none of the fields {list(fields)} (it has {sorted(row)}); pick with --field")
    return texts


def _load_eval(sources: list[_Source], fields: tuple[str, ...], n: int) -> EvalIndex:
    problems: dict[str, list[str]] = {}
    ids: dict[str, list[str]] = {}
    for src in sources:
        for where, row, _ in _rows(src.files):
            problems.setdefault(src.name, []).append("\n".join(_texts(row, fields, where)))
            task_ids = ids.setdefault(src.name, [])
            task_ids.append(next((str(row[k]) for k in ID_FIELDS if k in row), str(len(task_ids))))
    return EvalIndex.build(problems, n=n, ids=ids)


def _metric_name(source: str) -> str:
    return re.sub(r"[^\w\-./ ]", "_", source)


def log_to_mlflow(report: Report, run_id: str, tracking_uri: str | None) -> None:
    """Counts as ``contamination/<source>/{checked,overlapping}``, the report as ``contamination/report.json``."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=tracking_uri)
    now = int(time.time() * 1000)
    metrics = []
    for rep in report.sources.values():
        key = f"contamination/{_metric_name(rep.source)}"
        metrics += [
            Metric(f"{key}/checked", rep.checked, now, 0),
            Metric(f"{key}/overlapping", rep.contaminated, now, 0),
        ]
    client.log_batch(run_id, metrics=metrics)
    client.set_tag(run_id, "contamination.n", str(report.n))
    client.log_dict(run_id, report.to_dict(), "contamination/report.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m thinkflow.contamination", description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", action="append", required=True, help="JSONL file or directory ([NAME=]PATH)")
    parser.add_argument("--eval", action="append", required=True, help="JSONL file or directory ([NAME=]PATH)")
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="n-gram length (default 13)")
    parser.add_argument("--field", action="append", help=f"text field(s) to check (default: {', '.join(KNOWN_FIELDS)})")
    parser.add_argument("--action", choices=ACTIONS, default="report")
    parser.add_argument("--out", type=Path, help="with --action drop: where the clean training rows go")
    parser.add_argument("--mlflow-run", help="log counts and the report to this MLflow run")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    args = parser.parse_args(argv)
    if (args.action == "drop") != (args.out is not None):
        parser.error("--out goes with --action drop, and --action drop needs --out")
    if args.n < 1:
        parser.error("--n must be >= 1")
    try:
        return _run(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    fields = tuple(args.field or KNOWN_FIELDS)
    train_sources, eval_sources = _sources(args.train), _sources(args.eval)
    index = _load_eval(eval_sources, fields, args.n)
    report = Report(index.n, dict(index.tasks))
    clean: list[str] = []
    for src in train_sources:
        rows = tqdm(_rows(src.files), desc=src.name, unit="row", file=sys.stderr, disable=None)  # bar on a TTY
        for where, row, raw in rows:
            texts = _texts(row, fields, where)
            overlaps = [o for t in texts for o in index.find(t)]
            report.add(src.name, overlaps, "\n".join(texts))
            if not overlaps:
                clean.append(raw)
    print(report.table())
    if args.mlflow_run:
        log_to_mlflow(report, args.mlflow_run, args.tracking_uri)
        print(f"logged to MLflow run {args.mlflow_run}")
    if report.contaminated and args.action == "fail":
        print(f"contamination: {report.describe()}", file=sys.stderr)
        return 1
    if args.action == "drop":
        if report.checked and not clean:
            print(f"error: dropping removed all {report.checked} training rows", file=sys.stderr)
            return 1
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("".join(f"{line}\n" for line in clean), encoding="utf-8")
        print(f"wrote {len(clean)} clean rows ({report.contaminated} dropped) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
