"""MATH-500: competition mathematics, 500 problems in five difficulty levels and seven subjects.

    python flows/pipeline.py task=math500 "~pretrain" "~rl" ttc.init_from=DIR     # a model on MATH-500
    python flows/pipeline.py experiment=math500_api                                  # API contestants

The split of "Let's Verify Step by Step" (Lightman et al. 2023), from a local directory holding
``test.jsonl`` (``../shared/datasets/math500``) or a hub id (``HuggingFaceH4/MATH-500``) through HF
``datasets``. Evaluation only: there is no training split (``evaluation_only``), and the training
stages refuse it. Fields: ``problem``, ``solution``, ``answer`` (LaTeX), ``subject``, ``level``
(1-5), ``unique_id``; level and subject travel in ``Problem.meta`` for the reports' breakdowns and
serve as the difficulty bins of the compute-optimal allocation.

Prompts (standard in the field):

- the task's own prompt: a Minerva-style few-shot prompt (Lewkowycz et al. 2022: four worked MATH
  problems ending in ``\\boxed{}`` and "Final Answer: The final answer is ... I hope it is
  correct."), ``task.shots`` of them (4 by default; 0 gives the bare problem), for base models;
- ``chat_instruction``: the zero-shot instruction "Please reason step by step, and put your final
  answer within \\boxed{}." for chat models (``compare`` contestants with ``prompt: chat``).

Answers: thinking-aware (text inside ``task.thinking`` delimiters is thinking; the answer is read
after the last closing delimiter; an unfinished thinking block is no answer), the last ``\\boxed{}``
of the answer part (else the Minerva "final answer is $...$" line), checked against the gold answer
with ``math-verify`` in a worker process with a per-check timeout (``tasks.answers.MathChecker``):
``\\frac{1}{2}`` equals ``0.5``, ``\\left( 3, \\frac{\\pi}{2} \\right)`` equals ``(3,\\pi/2)``.
"""

from __future__ import annotations

import hashlib
import json
import random
import re

from thinkflow.tasks.answers import MathChecker, last_boxed, split_thinking
from thinkflow.tasks.base import Problem, Task, TaskError
from thinkflow.tasks.data import load_rows

FIELDS = ("problem", "solution", "answer", "subject", "level", "unique_id")
CHAT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_FINAL = re.compile(r"final answer is \$(.+?)\$", re.S)
# Minerva's four worked examples (from the MATH training split; as in lm-evaluation-harness' minerva_math).
MINERVA_SHOTS = (
    (
        "Find the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.}",
        "The expressions inside each square root must be non-negative. Therefore, $x-2 \\ge 0$, so $x\\ge2$, and "
        "$5 - x \\ge 0$, so $x \\le 5$. Also, the denominator cannot be equal to zero, so $5-x>0$, which gives "
        "$x<5$. Therefore, the domain of the expression is $\\boxed{[2,5)}$.",
        "[2,5)",
    ),
    (
        "If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find $\\det (\\mathbf{A} \\mathbf{B}).$",
        "We have that $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B}) = (2)(12) = "
        "\\boxed{24}.$",
        "24",
    ),
    (
        "Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights instead, how many "
        "times must Terrell lift them in order to lift the same total weight?",
        "If Terrell lifts two 20-pound weights 12 times, he lifts a total of $2\\cdot 12\\cdot20=480$ pounds of "
        "weight.  If he lifts two 15-pound weights instead for $n$ times, he will lift a total of "
        "$2\\cdot15\\cdot n=30n$ pounds of weight.  Equating this to 480 pounds, we can solve for $n$:\n"
        "\\begin{align*}\n30n&=480\\\\\n\\Rightarrow\\qquad n&=480/30=\\boxed{16}\n\\end{align*}",
        "16",
    ),
    (
        "If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x &=b.\n\\end{align*}has a solution "
        "$(x, y)$ where $x$ and $y$ are both nonzero, find $\\frac{a}{b},$ assuming $b$ is nonzero.",
        "If we multiply the first equation by $-\\frac{3}{2}$, we obtain\n\n$$6y-9x=-\\frac{3}{2}a.$$Since we "
        "also know that $6y-9x=b$, we have\n\n$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$$",
        "-\\frac{2}{3}",
    ),
)


class MATH500(Task):
    name = "math500"
    answer_delim = "\\boxed"
    evaluation_only = True  # no training split: ttc (ttc.init_from) and compare only
    chat_instruction = CHAT_INSTRUCTION
    stop = ("\n\nProblem:",)  # a base model that goes on to invent the next few-shot problem

    def __init__(
        self,
        source: str = "HuggingFaceH4/MATH-500",
        shots: int = 4,
        thinking: tuple[str, str] = ("<think>", "</think>"),
        timeout_s: float = 2.0,
    ) -> None:
        if not 0 <= shots <= len(MINERVA_SHOTS):
            raise TaskError(f"task.shots for math500 is 0..{len(MINERVA_SHOTS)}, got {shots}")
        self.source, self.shots, self.thinking, self.timeout_s = source, shots, tuple(thinking), timeout_s
        self._checker: MathChecker | None = None

    # ---------------------------------------------------------------- data

    def check(self) -> None:
        self._rows()

    def _rows(self) -> list[dict]:
        return load_rows("math500", self.source, "test", FIELDS, check=_bad_record)

    def splits(self, n_train: int, n_test: int, seed: int) -> tuple[list[Problem], list[Problem]]:
        """Held-out problems: ``n_test`` of the 500, a seeded draw stratified by level (all 500 when
        ``n_test >= 500``). "Train" is the four Minerva examples, the only solved problems that go with
        this benchmark (few-shot prompts, a learned verifier's tiny fit); never more than four."""
        rows = self._rows()
        if n_test < 1:
            raise TaskError(f"math500: n_test must be >= 1, got {n_test}")
        chosen = rows if n_test >= len(rows) else _stratified(rows, n_test, seed)
        shots = [self._shot(i) for i in range(min(max(n_train, 0), len(MINERVA_SHOTS)))]
        return shots, [self._problem(r) for r in chosen]

    def _problem(self, row: dict) -> Problem:
        question = row["problem"].strip()
        uid = row["unique_id"] or hashlib.sha1(question.encode()).hexdigest()[:16]
        prefix = "".join(_shot_text(*MINERVA_SHOTS[i]) for i in range(self.shots))
        return Problem(
            id=uid,
            prompt=prefix + _question(question),
            answer=str(row["answer"]).strip(),
            trace=row["solution"],
            meta={"level": int(row["level"]), "subject": row["subject"], "question": question},
        )

    def _shot(self, i: int) -> Problem:
        question, solution, answer = MINERVA_SHOTS[i]
        meta = {"question": question}
        return Problem(id=f"minerva-shot-{i}", prompt=_question(question), answer=answer, trace=solution, meta=meta)

    def completion(self, problem: Problem) -> str:
        return _completion(problem.trace, problem.answer)

    # ---------------------------------------------------------------- answers

    def answer_part(self, text: str) -> str | None:
        """The text after thinking, up to where a base model starts inventing the next problem."""
        _, answer = split_thinking(text, *self.thinking)
        if answer is None:
            return None
        return answer.split("\n\nProblem:", 1)[0]

    def extract_answer(self, text: str) -> str | None:
        part = self.answer_part(text)
        if part is None:
            return None
        boxed = last_boxed(part)
        if boxed is None:
            final = _FINAL.findall(part)
            boxed = final[-1] if final else None
        return " ".join(boxed.split()) if boxed and boxed.strip() else None

    def verify(self, text: str, problem: Problem) -> bool:
        got = self.extract_answer(text)  # re-boxed: the checker reads the last \boxed{} of what it is given
        return got is not None and self.checker.check("\\boxed{" + got + "}", problem.answer).correct

    def check_stats(self) -> dict[str, int]:
        """Checks made by this task's checker so far: checks, cache hits, hostile answers screened out, timeouts."""
        zeros = {"checks": 0, "cache_hits": 0, "screened": 0, "timeouts": 0}
        return dict(self._checker.stats) if self._checker is not None else zeros

    @property
    def checker(self) -> MathChecker:
        if self._checker is None:
            self._checker = MathChecker(timeout_s=self.timeout_s)
        return self._checker


def _bad_record(row: dict) -> str | None:
    for key in ("problem", "answer", "subject"):
        if not isinstance(row[key], str) or not row[key].strip():
            return f"field {key!r} must be a non-empty string, got {json.dumps(row[key])[:60]}"
    if type(row["level"]) is not int or not 1 <= row["level"] <= 5:
        return f"field 'level' must be an integer 1..5, got {json.dumps(row['level'])[:60]}"
    return None


def _question(question: str) -> str:
    return f"Problem:\n{question}\n\nSolution:"


def _completion(solution: str, answer: str) -> str:
    return f" {solution.strip()}\nFinal Answer: The final answer is ${answer}$. I hope it is correct."


def _shot_text(question: str, solution: str, answer: str) -> str:
    return _question(question) + _completion(solution, answer) + "\n\n"


def _stratified(rows: list[dict], n: int, seed: int) -> list[dict]:
    """``n`` rows with each level's share as in the full set (largest remainders), seeded; file order kept."""
    by_level: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_level.setdefault(int(r["level"]), []).append(i)
    quota = {lv: n * len(ix) / len(rows) for lv, ix in by_level.items()}
    take = {lv: int(q) for lv, q in quota.items()}
    for lv in sorted(quota, key=lambda lv: take[lv] - quota[lv])[: n - sum(take.values())]:
        take[lv] += 1
    rng = random.Random(f"math500:{seed}")
    picked = sorted(i for lv, ix in by_level.items() for i in rng.sample(ix, take[lv]))
    return [rows[i] for i in picked]
