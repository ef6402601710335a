"""``task.prompt=chat``: the policy's prompts through its tokenizer's chat template (instruct models), with the
task's own answer extraction and checks; refused, naming the problem, where there is no template to use."""

import pytest

from tests.conftest import compose
from thinkflow.catalog import build_task
from thinkflow.config import ConfigError, validate
from thinkflow.models.families import bpe_tokenizer, default_corpus
from thinkflow.models.tokenizer import build_char_tokenizer
from thinkflow.tasks import TaskError
from thinkflow.tasks.prompts import ChatPrompted, instruction


@pytest.fixture(scope="module")
def chat_tokenizer():
    return bpe_tokenizer(default_corpus())  # a small BPE tokenizer with a chat template


def test_prompts_go_through_the_template_and_answers_through_the_task(chat_tokenizer):
    task = build_task("addition", 2)
    plain_train, plain_test = task.splits(8, 4, seed=0)
    chat = ChatPrompted(task, chat_tokenizer)
    train, test = chat.splits(8, 4, seed=0)
    assert [p.id for p in train + test] == [p.id for p in plain_train + plain_test]  # the same problems
    for plain, p in zip(plain_test, test, strict=True):
        assert p.prompt == (
            f"<|system|>\n{instruction(task)}<eos>\n<|user|>\n{plain.prompt.strip()}<eos>\n<|assistant|>\n"
        )
        assert p.meta["question"] == plain.prompt  # decontamination compares questions, not templates
        assert chat.completion(p) == task.completion(plain)
        assert chat.verify(task.completion(plain), p) and not chat.verify("0>1", p)
    assert chat.name == task.name and chat.answer_delim == task.answer_delim


def test_a_tokenizer_without_a_chat_template_is_refused_by_name():
    with pytest.raises(TaskError, match="task.prompt=chat needs a tokenizer with a chat template.*has none"):
        ChatPrompted(build_task("addition", 2), build_char_tokenizer())  # thinkflow's character-level model


def test_the_config_refuses_chat_with_pretrain_and_with_environment_tasks(tmp_path):
    with pytest.raises(ConfigError, match=r"task.prompt=chat needs an instruct model's chat template.*~pretrain"):
        validate(compose(["task.prompt=chat"], root=tmp_path))
    with pytest.raises(ConfigError, match="task: prompt=chat is for single-turn tasks; calc runs episodes"):
        validate(compose(["task=calc", "task.prompt=chat", "~pretrain", "rl.init_from=x"], root=tmp_path))
    cfg = validate(compose(["task.prompt=chat", "~pretrain", "rl.init_from=x"], root=tmp_path))
    assert cfg.task.prompt == "chat" and type(cfg.task.build()).__name__ != "ChatPrompted"  # no tokenizer yet
