"""GSM8K grade-school maths through HF ``datasets``: a hub id or a local JSONL path.

Standard extraction: the final answer follows ``####``; commas and ``$`` are dropped and the
number is compared numerically (``Decimal``, so huge numbers never overflow or lose digits).

Local files (``task.source=DIR`` with ``train.jsonl``/``test.jsonl``, or one ``.jsonl``/``.json`` file)
are read here, not through ``datasets``, and every record is checked: a bad line stops the run with
the file, the line and what is wrong (``GSM8K.check`` runs this before any compute). A hub id is
loaded through ``datasets``; its rows without a ``####`` answer are skipped and counted in
``skipped_rows``.
"""

from __future__ import annotations

import hashlib
import json
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

    def check(self) -> None:
        """Read and check both splits of a local source (a TaskError names the file, line and problem);
        a hub id cannot be checked offline and is left to ``datasets`` when a stage loads it."""
        for split in ("test", "train"):
            if (file := self._local_file(split)) is not None:
                read_records(file)

    def _local_file(self, split: str) -> Path | None:
        """The local file holding ``split``, or None for a hub id."""
        path = Path(self.source)
        if path.is_dir():
            file = path / f"{split}.jsonl"
            if not file.exists():
                raise TaskError(f"gsm8k: no {split}.jsonl in local dataset directory {path}")
            return file
        if path.suffix in (".json", ".jsonl") or "/" in self.source and path.parent.exists():
            if not path.exists():
                raise TaskError(f"gsm8k: dataset path {path} does not exist")
            return path
        return None

    def _load(self, split: str) -> list[dict]:
        if (file := self._local_file(split)) is not None:
            return read_records(file)
        import datasets

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
            canonical = final_answer(solution)
            if canonical is None:  # only hub rows get here: local files are checked as they are read
                self.skipped_rows += 1
                continue
            trace = solution.rsplit("####", 1)[0]
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
        return _number(self.answer_span(text))

    def answers_equal(self, got: str, want: str) -> bool:
        return Decimal(got) == Decimal(want)


def final_answer(solution: str) -> str | None:
    """The canonical number after the last ``####`` of a reference solution, or None."""
    return _number(GSM8K().answer_span(solution))


def _number(span: str | None) -> str | None:
    m = _NUMBER.search(span.replace("$", "")) if span else None
    return _canonical(m.group(0).replace(",", "")) if m else None


def read_records(file: Path) -> list[dict]:
    """Every record of a local GSM8K file (JSON Lines, or a JSON array), each checked; a TaskError names
    the file, the line (or record) and what is wrong: bad JSON, a missing field, no ``####`` answer, no records."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TaskError(f"gsm8k data: {file}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if file.suffix == ".json" and text.lstrip().startswith("["):  # one JSON array (datasets reads these too)
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise TaskError(
                f"gsm8k data: {file}, line {err.lineno}: bad JSON ({err.msg}, column {err.colno})"
            ) from None
        rows = [_checked(r, f"{file}, record {i}") for i, r in enumerate(records, 1)]
    else:
        rows = []
        for lineno, line in enumerate(text.split("\n"), 1):  # JSON Lines: only \n ends a record
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise TaskError(
                    f"gsm8k data: {file}, line {lineno}: bad JSON ({err.msg}, column {err.colno})"
                ) from None
            rows.append(_checked(record, f"{file}, line {lineno}"))
    if not rows:
        raise TaskError(f"gsm8k data: {file}: empty split (no records)")
    return rows


def _checked(record, where: str) -> dict:
    if not isinstance(record, dict):
        raise TaskError(
            f"gsm8k data: {where}: expected a JSON object with question and answer, got {json.dumps(record)[:80]}"
        )
    for key in ("question", "answer"):
        if key not in record:
            raise TaskError(f"gsm8k data: {where}: missing field {key!r} (has {sorted(record)})")
        if not isinstance(record[key], str) or not record[key].strip():
            raise TaskError(f"gsm8k data: {where}: field {key!r} must be a non-empty string, got {record[key]!r:.80}")
    if "####" not in record["answer"]:
        raise TaskError(f"gsm8k data: {where}: answer has no '#### <number>' final answer")
    if final_answer(record["answer"]) is None:
        tail = record["answer"].rsplit("####", 1)[1].strip()
        raise TaskError(f"gsm8k data: {where}: no number after '####' (got {tail!r:.80})")
    return record


def _canonical(number: str) -> str | None:
    """``-003.50`` -> ``-3.5`` by string surgery: exact for any length (Decimal would round)."""
    sign = "-" if number.startswith("-") else ""
    whole, _, frac = number.lstrip("-").partition(".")
    whole, frac = whole.lstrip("0") or "0", frac.rstrip("0")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        return None
    text = f"{whole}.{frac}" if frac else whole
    return "0" if text == "0" else sign + text
