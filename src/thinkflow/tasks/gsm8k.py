"""GSM8K grade-school maths through HF ``datasets``: a hub id or a local JSONL path.

Standard extraction: the final answer follows ``####``; commas and ``$`` are dropped and the
number is compared numerically (``Decimal``, so huge numbers never overflow or lose digits).
Rows whose answer has no ``####`` are skipped and counted in ``skipped_rows``.
"""

from __future__ import annotations

import hashlib
import re
from decimal import Decimal
from pathlib import Path

from thinkflow.tasks.base import Problem, Task, TaskError

_NUMBER = re.compile(r"-?[0-9][0-9,]*(?:\.[0-9]+)?", re.ASCII)


class GSM8K(Task):
    name = "gsm8k"
    answer_delim = "####"

    def __init__(self, source: str = "openai/gsm8k", config_name: str = "main") -> None:
        self.source = source
        self.config_name = config_name
        self.skipped_rows = 0

    def _load(self, split: str) -> list[dict]:
        import datasets

        path = Path(self.source)
        if path.is_dir():
            file = path / f"{split}.jsonl"
            if not file.exists():
                raise TaskError(f"gsm8k: no {split}.jsonl in local dataset directory {path}")
            ds = datasets.load_dataset("json", data_files=str(file), split="train")
        elif path.suffix in (".json", ".jsonl") or "/" in self.source and path.parent.exists():
            if not path.exists():
                raise TaskError(f"gsm8k: dataset path {path} does not exist")
            ds = datasets.load_dataset("json", data_files=str(path), split="train")
        else:
            ds = datasets.load_dataset(self.source, self.config_name, split=split)
        missing = {"question", "answer"} - set(ds.column_names)
        if missing:
            raise TaskError(f"gsm8k: dataset {self.source} lacks column(s) {sorted(missing)}")
        return list(ds)

    def _problems(self, rows: list[dict], n: int) -> list[Problem]:
        out = []
        for row in rows:
            if len(out) == n:
                break
            solution = row["answer"] or ""
            if "####" not in solution:
                self.skipped_rows += 1
                continue
            trace, answer = solution.rsplit("####", 1)
            canonical = self.extract_answer("####" + answer)
            if canonical is None:
                self.skipped_rows += 1
                continue
            question = row["question"].strip()
            out.append(
                Problem(
                    id=hashlib.sha1(question.encode()).hexdigest()[:16],
                    prompt=f"Question: {question}\nAnswer: ",
                    answer=canonical,
                    trace=trace.rstrip() + "\n",
                )
            )
        return out

    def splits(self, n_train: int, n_test: int, seed: int) -> tuple[list[Problem], list[Problem]]:
        test = self._problems(self._load("test"), n_test)
        test_ids = {p.id for p in test}
        train = [p for p in self._problems(self._load("train"), n_train) if p.id not in test_ids]
        if not test:
            raise TaskError(f"gsm8k: no usable test rows in {self.source}")
        return train, test

    def completion(self, problem: Problem) -> str:
        return f"{problem.trace}#### {problem.answer}"

    def extract_answer(self, text: str) -> str | None:
        span = self.answer_span(text)
        if not span:
            return None
        m = _NUMBER.search(span.replace("$", ""))
        if not m:
            return None
        return _canonical(m.group(0).replace(",", ""))

    def answers_equal(self, got: str, want: str) -> bool:
        return Decimal(got) == Decimal(want)


def _canonical(number: str) -> str | None:
    """``-003.50`` -> ``-3.5`` by string surgery: exact for any length (Decimal would round)."""
    sign = "-" if number.startswith("-") else ""
    whole, _, frac = number.lstrip("-").partition(".")
    whole, frac = whole.lstrip("0") or "0", frac.rstrip("0")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        return None
    text = f"{whole}.{frac}" if frac else whole
    return "0" if text == "0" else sign + text
