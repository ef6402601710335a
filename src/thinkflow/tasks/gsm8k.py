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
from decimal import Decimal

from thinkflow.tasks.answers import LENIENT, extract_with, hash_answer, split_thinking
from thinkflow.tasks.base import Problem, Task, TaskError
from thinkflow.tasks.data import load_rows, local_file

FIELDS = ("question", "answer")


class GSM8K(Task):
    name = "gsm8k"
    answer_delim = "####"

    chat_instruction = (
        "Solve the problem step by step. On the last line write the final answer as '#### <number>' and nothing "
        "after it."
    )

    def __init__(
        self,
        source: str = "openai/gsm8k",
        config_name: str = "main",
        thinking: tuple[str, str] = ("<think>", "</think>"),
    ) -> None:
        self.source = source
        self.config_name = config_name
        self.thinking = tuple(thinking)
        self.skipped_rows = 0

    def check(self) -> None:
        """Read and check both splits of a local source (a TaskError names the file, line and problem);
        a hub id cannot be checked offline and is left to ``datasets`` when a stage loads it."""
        for split in ("test", "train"):
            if local_file(self.name, self.source, split) is not None:
                self._load(split)

    def _load(self, split: str) -> list[dict]:
        return load_rows(self.name, self.source, split, FIELDS, self.config_name, check=_bad_record)

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

    def answer_part(self, text: str) -> str | None:
        """The text after thinking (``thinking`` delimiters); None while a thinking block is unfinished."""
        return split_thinking(text, *self.thinking)[1] if text else None

    def extract_answer(self, text: str) -> str | None:
        """Strict, GSM8K's own format: the number after the last ``####``."""
        part = self.answer_part(text)
        return hash_answer(part) if part else None

    def extract_lenient(self, text: str) -> str | None:
        """``####``, else the last ``\\boxed{}`` number, else the last number: the lenient-minus-strict gap in
        accuracy is where format failures (and format-gaming) show."""
        part = self.answer_part(text)
        return extract_with(LENIENT, part)[0] if part else None

    def verify_lenient(self, text: str, problem: Problem) -> bool:
        got = self.extract_lenient(text)
        return got is not None and self.answers_equal(got, problem.answer)

    def answers_equal(self, got: str, want: str) -> bool:
        return Decimal(got) == Decimal(want)


def final_answer(solution: str) -> str | None:
    """The canonical number after the last ``####`` of a reference solution, or None."""
    return hash_answer(solution)


def _bad_record(record: dict) -> str | None:
    """What is wrong with a local GSM8K record (fields present: ``tasks.data`` checked them), or None."""
    for key in FIELDS:
        if not isinstance(record[key], str) or not record[key].strip():
            return f"field {key!r} must be a non-empty string, got {record[key]!r:.80}"
    if "####" not in record["answer"]:
        return "answer has no '#### <number>' final answer"
    if final_answer(record["answer"]) is None:
        return f"no number after '####' (got {record['answer'].rsplit('####', 1)[1].strip()!r:.80})"
    return None
