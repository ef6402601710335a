"""The same problems, put to every model in the form it understands (compare's contestants, and with
``task.prompt=chat`` the policy of rl, ttc and sft through ``ChatPrompted``).

- ``plain``: the task's own prompt (models trained by this pipeline);
- ``fewshot``: solved training problems (prompt + worked solution) before the question, for base
  language models; generation stops at the blank line that would start the next example;
- ``chat``: an instruction naming the answer format, the solved examples as earlier turns, then
  the question, for chat models (API chat endpoints, or a local tokenizer's chat template).

Whatever the form, the answer is extracted and verified by the task's own code, identically for
every contestant: the text after the last answer delimiter (e.g. ``#### 42``).
"""

from __future__ import annotations

from dataclasses import replace

from thinkflow.tasks.base import Problem, Task, TaskError

Chat = tuple[tuple[str, str], ...]  # ((role, content), ...)


def instruction(task: Task) -> str:
    if getattr(task, "chat_instruction", None):  # environment tasks say how to act in their own words
        return task.chat_instruction
    return (
        "Solve the problem step by step. On the last line write the final answer as "
        f"'{task.answer_delim} <answer>' and nothing after it."
    )


def render(task: Task, problem: Problem, style: str, shots: list[Problem]) -> str | Chat:
    if style == "plain":
        return problem.prompt
    if style == "fewshot":
        return "".join(s.prompt + task.completion(s).rstrip() + "\n\n" for s in shots) + problem.prompt
    if style == "chat":
        turns: list[tuple[str, str]] = [("system", instruction(task))]
        for s in shots:
            turns += [("user", s.prompt.strip()), ("assistant", task.completion(s).strip())]
        # a benchmark whose own prompt carries worked examples (MATH-500's Minerva prompt) keeps the bare question
        return (*turns, ("user", problem.meta.get("question", problem.prompt).strip()))
    raise ValueError(f"unknown prompt style {style!r}; known: plain, fewshot, chat")


def stop_strings(style: str) -> tuple[str, ...]:
    return ("\n\n",) if style == "fewshot" else ()


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_to_text(tokenizer, messages: Chat) -> str:
    """A chat prompt through a local tokenizer's chat template (system turn folded in if needed)."""
    if not has_chat_template(tokenizer):
        raise ValueError("this tokenizer has no chat template; use prompt=fewshot for a base model")
    msgs = [{"role": r, "content": c} for r, c in messages]
    try:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    except Exception:  # templates without a system role (e.g. Gemma): fold it into the first user turn
        system, rest = msgs[0]["content"], msgs[1:]
        rest[0] = {"role": "user", "content": system + "\n\n" + rest[0]["content"]}
        return tokenizer.apply_chat_template(rest, tokenize=False, add_generation_prompt=True)


class ChatPrompted(Task):
    """``task.prompt=chat``: ``task``'s problems with each prompt put through ``tokenizer``'s chat template (the
    answer-format instruction, then the question as the user's turn, the assistant's turn opened), for
    instruct models. Everything else is ``task``'s own: traces, answer extraction and checking, data checks.
    The question stays in ``meta["question"]`` (decontamination compares questions, not templates)."""

    def __init__(self, task: Task, tokenizer) -> None:
        if not has_chat_template(tokenizer):
            raise TaskError(
                f"task.prompt=chat needs a tokenizer with a chat template, and this model's tokenizer "
                f"({type(tokenizer).__name__}, {getattr(tokenizer, 'name_or_path', '') or 'no path'}) has none: "
                "a base model takes task.prompt=plain"
            )
        self.task, self.tokenizer = task, tokenizer
        self.name, self.answer_delim = task.name, task.answer_delim

    def _chat(self, problem: Problem) -> Problem:
        text = chat_to_text(self.tokenizer, render(self.task, problem, "chat", []))
        question = problem.meta.get("question", problem.prompt)
        return replace(problem, prompt=text, meta={**problem.meta, "question": question})

    def splits(self, n_train: int, n_test: int, seed: int) -> tuple[list[Problem], list[Problem]]:
        train, test = self.task.splits(n_train, n_test, seed)
        return [self._chat(p) for p in train], [self._chat(p) for p in test]

    def completion(self, problem: Problem) -> str:
        return self.task.completion(problem)

    def completion_segments(self, problem: Problem) -> list[tuple[str, bool]]:
        return self.task.completion_segments(problem)

    def answer_span(self, text: str) -> str | None:
        return self.task.answer_span(text)

    def extract_answer(self, text: str) -> str | None:
        return self.task.extract_answer(text)

    def verify(self, text: str, problem: Problem) -> bool:
        return self.task.verify(text, problem)

    def answers_equal(self, got: str, want: str) -> bool:
        return self.task.answers_equal(got, want)

    def check(self) -> None:
        self.task.check()

    def __getattr__(self, name: str):  # the task's own extras (e.g. ``evaluation_only``)
        if name == "task":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.task, name)
