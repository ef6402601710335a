"""The same problems, put to every contestant in the form it understands.

- ``plain``: the task's own prompt (models trained by this pipeline);
- ``fewshot``: solved training problems (prompt + worked solution) before the question, for base
  language models; generation stops at the blank line that would start the next example;
- ``chat``: an instruction naming the answer format, the solved examples as earlier turns, then
  the question, for chat models (API chat endpoints, or a local tokenizer's chat template).

Whatever the form, the answer is extracted and verified by the task's own code, identically for
every contestant: the text after the last answer delimiter (e.g. ``#### 42``).
"""

from __future__ import annotations

from thinkflow.tasks import Problem, Task

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


def chat_to_text(tokenizer, messages: Chat) -> str:
    """A chat prompt through a local tokenizer's chat template (system turn folded in if needed)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this tokenizer has no chat template; use prompt=fewshot for a base model")
    msgs = [{"role": r, "content": c} for r, c in messages]
    try:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    except Exception:  # templates without a system role (e.g. Gemma): fold it into the first user turn
        system, rest = msgs[0]["content"], msgs[1:]
        rest[0] = {"role": "user", "content": system + "\n\n" + rest[0]["content"]}
        return tokenizer.apply_chat_template(rest, tokenize=False, add_generation_prompt=True)
