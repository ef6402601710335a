"""Environment tasks: the calculator and its protocol, episodes through engines, masks, the code env."""

from __future__ import annotations

import re

import pytest
import torch

from tests.conftest import compose
from tests.inference.test_backends import TINY as VLLM_TINY
from tests.inference.test_backends import _vllm_available
from thinkflow.catalog import build_task
from thinkflow.config import validate
from thinkflow.envs import EnvEngine, env_metrics, sample_verdict, with_env
from thinkflow.envs.calculator import ToolArithmetic, calculate, replay
from thinkflow.envs.code import CodeTask, program_of
from thinkflow.envs.sandbox import SandboxLimits
from thinkflow.inference import HFEngine, Sample, SamplingParams
from thinkflow.models import build_char_tokenizer, build_model_and_tokenizer
from thinkflow.pretrain.data import IGNORE, encode_examples
from thinkflow.rl.objectives import ObjectiveConfig
from thinkflow.rl.rewards import RewardConfig
from thinkflow.rl.rollout import build_batch, collect
from thinkflow.tasks.expr import ExprError

TINY = dict(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, d_ff=64, max_seq_len=128)


class ProtocolFollower:
    """A scripted policy (not a model): from the context it writes the next turn of the ideal tool-use
    trace, through the real char tokenizer, so episodes can be checked exactly. ``tokens=False`` behaves
    like an API: text only, stop strings dropped."""

    def __init__(self, task: ToolArithmetic, tokens: bool = True, garble: bool = False) -> None:
        self.task, self.tokenizer, self.tokens, self.garble = task, build_char_tokenizer(), tokens, garble
        self.calls: list[tuple[int, int]] = []  # (contexts, max_new_tokens) per generate call

    def next_turn(self, context: str) -> str:
        prompt, _, done = context.partition("=")
        problem = self.task.make(prompt + "=")
        for text, _ in self.task.completion_segments(problem):
            if done.startswith(text):
                done = done[len(text) :]
                continue
            return "[12*]" if self.garble and text.startswith("[") else text
        raise AssertionError(f"context {context!r} is past the trace")

    def generate(self, prompts, params: SamplingParams) -> list[list[Sample]]:
        self.calls.append((len(prompts), params.max_new_tokens))
        out = []
        for i, prompt in enumerate(prompts):
            # chat: the question, then the assistant / user (observation) turns in order
            context = prompt if isinstance(prompt, str) else prompt[0][1] + "".join(c for _, c in prompt[1:])
            turn = self.next_turn(context)
            ids = self.tokenizer(turn, add_special_tokens=False).input_ids
            if turn.startswith(">"):
                ids = ids + [self.tokenizer.eos_token_id]
            if not self.tokens:
                text = turn[:-1] if turn.endswith("]") else turn  # an API drops the stop string
                out.append([Sample(i, text, [], [], "stop", len(str(prompt)), len(ids))] * params.n)
            else:
                out.append([Sample(i, turn.rstrip("]"), ids, [-0.1] * len(ids), "stop", len(prompt) + 1)] * params.n)
        return out


def test_calculator_is_exact_and_bounded():
    assert calculate("347*586") == "203342"
    assert calculate("(1+2)*3-4") == "5"
    assert calculate("7/2") == "7/2" and calculate("-3*2") == "-6"
    for bad, why in [
        ("2**10", "unexpected token"),
        ("__import__('os')", "unexpected character"),
        ("1" * 13, "more than 12 digits"),
        ("+".join(["1"] * 20), "more than 16 operators"),
        ("(" * 5 + "1" + ")" * 5, "nested deeper"),
        ("*".join(["999999999999"] * 4), "exceeds 40 digits"),
        ("", "empty"),
        ("1/0", "division by zero"),
        ("(1+2", "unbalanced"),
    ]:
        with pytest.raises(ExprError, match=why):
            calculate(bad)


def test_calculator_episode_answers_calls_and_counts_malformed_ones():
    task = ToolArithmetic(3, max_turns=5)
    problem = task.make("347*586=")
    env = task.make_env()
    assert env.reset(problem) == "347*586="
    assert env.step("[347*586]") == ("{203342}", 0.0, False, {"call": "347*586"})
    obs, reward, done, info = env.step("[347*]")
    assert obs.startswith("{error: ") and not done and "unexpected end" in info["error"]
    assert env.step("oops]")[0] == "{error: a ] without its [}"
    obs, reward, done, _ = env.step(">203342")
    assert (obs, reward, done) == ("", 1.0, True)
    assert env.stats.tool_calls == 1 and env.stats.invalid_actions == 2 and env.stats.turns == 4
    assert env.stats.grounded_calls == 1  # 347 and 586 are in the prompt
    assert (
        env.transcript
        == "[347*586]{203342}[347*]{error: unexpected end of expression}oops]{error: a ] without its [}>203342"
    )
    # a call on numbers that appear nowhere before it (a miscopied operand) is answered but not grounded
    env = task.make_env()
    env.reset(task.make("12*34+56*78="))
    for action in ("[12*34]", "[56*87]", "[408+4872]", ">5280"):
        env.step(action)
    assert (env.stats.tool_calls, env.stats.grounded_calls) == (3, 2)
    again = replay(task, task.make("12*34+56*78="), env.transcript)
    assert (again.stats.tool_calls, again.stats.grounded_calls, again.stats.turns) == (3, 2, 4)
    # the turn limit ends the episode with the reward as it stands
    env = ToolArithmetic(3, max_turns=2).make_env()
    env.reset(problem)
    env.step("[1+1]")
    assert env.step("[2+2]")[1:3] == (0.0, True)
    # without the tool, a call is an error and counts as invalid
    env = ToolArithmetic(3, tools=False).make_env()
    env.reset(problem)
    assert env.step("[347*586]")[0] == "{error: no calculator here}" and env.stats.invalid_actions == 1
    assert ToolArithmetic(3, tools=False).completion(problem) == ">203342"


def test_pretraining_traces_train_on_model_tokens_only():
    task = ToolArithmetic(3, terms=2)
    problem = task.make("12*34+56*78=")
    assert task.completion(problem) == "[12*34]{408}[56*78]{4368}[408+4368]{4776}>4776"
    tok = build_char_tokenizer()
    row = encode_examples([problem], task, tok)[0]
    trained = tok.decode([t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != IGNORE])
    assert trained == "[12*34][56*78][408+4368]>4776<eos>"  # prompt and observations masked
    assert row["labels"][-1] == tok.eos_token_id


@pytest.mark.parametrize("terms", [1, 2])
def test_episodes_interleave_turns_and_mask_observations(terms):
    task = ToolArithmetic(3, terms=terms)
    _, problems = task.splits(0, 6, seed=0)
    engine = ProtocolFollower(task)
    groups = with_env(engine, task, problems).generate(
        [p.prompt for p in problems], SamplingParams(n=2, max_new_tokens=64)
    )
    tok = engine.tokenizer
    for problem, group in zip(problems, groups, strict=True):
        for s in group:
            assert s.text == task.completion(problem) and s.env["reward"] == 1.0
            assert (
                s.env["tool_calls"] == 2 * terms - 1 and s.env["turns"] == 2 * terms and s.env["invalid_actions"] == 0
            )
            assert len(s.mask) == len(s.token_ids) == len(s.logprobs) and s.gen_tokens == sum(s.mask)
            model_text = tok.decode(
                [t for t, m in zip(s.token_ids, s.mask, strict=True) if m], skip_special_tokens=True
            )
            assert model_text == "".join(t for t, trained in task.completion_segments(problem) if trained)
            assert all(lp == 0.0 for lp, m in zip(s.logprobs, s.mask, strict=True) if not m)
            assert sample_verdict(task, problem, s) == (True, 1.0)
    # turn 1 samples n per prompt in one call; later turns advance live episodes together, grouped by the
    # token budget each has left
    assert engine.calls[0] == (6, 64) and sum(n for n, _ in engine.calls[1:]) == 12 * (2 * terms - 1)
    assert all(budget < 64 for _, budget in engine.calls[1:])
    # the learner's batch trains on exactly the model's tokens
    flat = [s for g in groups for s in g]
    batch = build_batch(tok, [p.prompt for p in problems], flat)
    for i, s in enumerate(flat):
        targets = batch.input_ids[i, 1:][batch.loss_mask[i].bool()].tolist()
        assert targets == [t for t, m in zip(s.token_ids, s.mask, strict=True) if m]
    metrics = env_metrics(flat)
    assert metrics["env/tool_calls_per_episode"] == 2 * terms - 1 and metrics["env/invalid_action_rate"] == 0.0


def test_episodes_through_an_api_style_engine_and_a_chat_prompt():
    """No token ids, the stop string dropped by the backend: the environment restores it; chat prompts
    carry the episode as assistant / user turns."""
    task = ToolArithmetic(2, terms=2)
    problem = task.make("12*34+56*78=")
    engine = EnvEngine(ProtocolFollower(task, tokens=False), task, [problem])
    (text_ep,), (chat_ep,) = engine.generate(
        [problem.prompt, (("user", problem.prompt),)], SamplingParams(max_new_tokens=64)
    )
    for s in (text_ep, chat_ep):
        assert s.text == task.completion(problem) and s.env["reward"] == 1.0 and s.token_ids == [] and s.mask is None
    with pytest.raises(Exception, match="no problem registered"):
        engine.generate(["99*99="], SamplingParams())


def test_malformed_tool_calls_are_counted_and_never_raise_in_the_learner():
    task = ToolArithmetic(3)
    _, problems = task.splits(0, 4, seed=1)
    garbled = with_env(ProtocolFollower(task, garble=True), task, problems).generate(
        [p.prompt for p in problems], SamplingParams(max_new_tokens=30)
    )
    s = garbled[0][0]
    assert s.env["invalid_actions"] >= 1 and "{error: " in s.text and s.env["reward"] == 0.0
    assert s.env["end"] == "budget"  # the garbling policy never answers: its token budget ends the episode
    # a random model emits whatever it likes: the rollout goes on and is counted
    model, tok = build_model_and_tokenizer(TINY, seed=3)
    params = SamplingParams(temperature=1.0, max_new_tokens=40, seed=1)
    out = collect(HFEngine(model, tok), task, problems, 4, params, RewardConfig(), ObjectiveConfig("grpo"))
    m = out.metrics
    assert {"env/turns", "env/invalid_action_rate", "env/tool_calls_per_episode", "env/step_seconds"} <= set(m)
    assert 0 <= m["env/invalid_action_rate"] <= 1 and torch.isfinite(out.advantages).all()
    assert out.batch.loss_mask.sum() > 0


def test_code_env_rewards_the_share_of_hidden_tests_and_counts_violations():
    task = CodeTask(5, max_turns=1, limits=SandboxLimits(cpu_s=1, wall_s=3))
    _, problems = task.splits(0, 8, seed=0)
    p = problems[0]
    a, op, b = re.fullmatch(r"def f\(x\): return x\*(\d+)([+-])(\d+)", p.answer).groups()
    assert p.answer not in p.prompt or p.prompt.startswith("def f(x): return")  # the bug differs from the fix
    env = task.make_env()
    env.reset(p)
    assert env.step(p.answer)[1:3] == (1.0, True)
    env.reset(p)  # right for the first two hidden inputs (3, 4) only: 2 of 5
    partly = f"def f(x):\n    return x*{a}{op}{b} if x in (3, 4) else 10**6"
    assert env.step(partly)[1] == pytest.approx(0.4)
    env.reset(p)
    assert env.step("def f(x):\n    while True: pass")[1:3] == (0.0, True)
    assert env.stats.sandbox_violations == 1 and env.stats.violations == ["cpu_time"]
    env.reset(p)
    assert env.step("print('no function here')")[1] == 0.0 and env.stats.invalid_actions == 1
    # a second try after feedback on the first failing test
    env = CodeTask(5, max_turns=2).make_env()
    env.reset(p)
    obs, reward, done, _ = env.step("def f(x): return 10**6")
    assert obs.startswith("\n# failed: f(") and reward == 0.0 and not done
    assert env.step(p.answer)[1:3] == (1.0, True)
    assert program_of(env.transcript) == p.answer and task.verify(env.transcript, p)
    assert task.extract_answer("```python\ndef f(x):\n    return 1\n```") == "def f(x): return 1"


def test_build_task_takes_the_env_settings_and_names_bad_ones(tmp_path):
    def task(*overrides: str):
        return validate(compose(list(overrides), root=tmp_path)).task.build()

    calc = task("task=calc", "task.env.tools=false", "task.env.terms=2", "task.env.max_turns=3")
    assert (calc.max_turns, calc.tools, calc.terms) == (3, False, 2)
    code = task("task=code", "task.env.sandbox.cpu_s=0.5", "task.env.sandbox.isolation=hook")
    assert (code.limits.cpu_s, code.limits.wall_s, code.isolation) == (0.5, 5.0, "hook")  # the rest from conf/
    for override, key in [("task.env.terms=9", "task.env.terms"), ("task.env.max_turns=0", "task.env.max_turns")]:
        with pytest.raises(ValueError, match=key):
            task("task=calc", override)
    with pytest.raises(ValueError, match="terms"):  # the task's own check, for callers that skip the config
        ToolArithmetic(3, terms=9)
    with pytest.raises(KeyError, match="tools"):  # the whole task.env section, read by name: no silent fallback
        build_task("calc", 3, env={"terms": 2, "max_turns": None})


@pytest.mark.slow
@pytest.mark.skipif(
    not _vllm_available(), reason="vLLM venv not installed (python -m thinkflow.inference.vllm_server create-venv)"
)
def test_episodes_through_a_vllm_server_reuse_the_prefix_across_turns(tmp_path):
    """Multi-turn code episodes (feedback after each failing program) against a real vLLM server: every
    turn's context extends the last, and vLLM's prefix cache serves the shared part."""
    import httpx

    from thinkflow.checkpoints import save_hf
    from thinkflow.inference import open_engine

    model, tok = build_model_and_tokenizer(VLLM_TINY | {"max_seq_len": 512}, seed=7)
    path = save_hf(model, tok, tmp_path / "ckpt")
    task = CodeTask(5, max_turns=3)
    _, problems = task.splits(0, 4, seed=0)
    with open_engine("vllm", path, max_model_len=512, block_size=32) as engine:
        # every token stops its turn: each turn is one token, so a random model takes all three turns
        one_token = SamplingParams(
            n=2, temperature=1.0, max_new_tokens=60, seed=1, stop_token_ids=tuple(range(len(tok)))
        )
        groups = with_env(engine, task, problems).generate([p.prompt for p in problems], one_token)
        metrics = httpx.get(f"{engine.server.base_url}/metrics", timeout=30).text
    for s in (s for g in groups for s in g):
        assert s.env["turns"] == 3 and s.env["reward"] == 0.0  # a random model never writes f: feedback, twice
        assert len(s.mask) == len(s.token_ids) and sum(s.mask) == s.gen_tokens == 3
        assert s.text.count("\n# failed: ") == 2
    hits = sum(float(v) for v in re.findall(r"^vllm:prefix_cache_hits(?:_total)?\{[^}]*\} ([0-9.e+]+)$", metrics, re.M))
    assert hits > 0, "\n".join(line for line in metrics.splitlines() if "prefix" in line)
