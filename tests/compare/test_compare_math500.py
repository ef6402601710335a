"""MATH-500 through the compare stage: an API contestant behind the local OpenAI-compatible server, answers
checked with math-verify (equivalent forms count), thinking blocks, cost per problem, accuracy by level and
subject; a real MLflow store, no component mocked."""

import json
import re
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.compare.openai_server import ScriptedOpenAIServer
from tests.conftest import ROOT, compose
from thinkflow.runner import run_stage, start_pipeline_run

MATH500_DIR = ROOT.parent / "shared" / "datasets" / "math500"
KEY = "sk-THINKFLOW-MATH500-TEST"
N = 20
# Equivalent forms the scripted model writes instead of the gold answer (math-verify must accept them).
REWRITES = {"\\frac{14}{3}": "14/3", "\\frac{1}{2}": "0.5", "90^\\circ": "90"}


@pytest.fixture(scope="module")
def math500_rows() -> dict[str, dict]:
    if not (MATH500_DIR / "test.jsonl").exists():
        pytest.skip(f"MATH-500 not found at {MATH500_DIR}")
    rows = [json.loads(line) for line in (MATH500_DIR / "test.jsonl").read_text().splitlines()]
    return {r["problem"].strip(): r for r in rows}


def scripted(rows: dict[str, dict]):
    """Levels 1-2: right (a thinking block, then a boxed answer, sometimes in another but equal form);
    level 3: right inside a thinking block never closed (no answer); levels 4-5: wrong."""

    def respond(prompt: str, seed: int, temperature: float) -> str:
        question = max(rows, key=lambda q: prompt.rfind(q))
        row = rows[question]
        gold = REWRITES.get(row["answer"], row["answer"])
        if row["level"] <= 2:
            return f"<think>Let me see. Maybe \\boxed{{0}}?</think> The answer is $\\boxed{{{gold}}}$."
        if row["level"] == 3:
            return f"<think>I believe it is \\boxed{{{gold}}} but let me check"
        return "After some work, the answer is $\\boxed{-12345}$."

    return respond


def test_api_contestant_on_math500_by_level_and_subject(tmp_path, math500_rows, monkeypatch):
    monkeypatch.setenv("THINKFLOW_TEST_KEY", KEY)
    api = {
        "kind": "openai",
        "model": "scripted",
        "api_key_env": "THINKFLOW_TEST_KEY",
        "prompt": "chat",
        "usd_per_mtok_in": 2.0,
        "usd_per_mtok_out": 8.0,
    }
    with ScriptedOpenAIServer(
        api_key=KEY, usd_per_mtok_in=2.0, usd_per_mtok_out=8.0, respond=scripted(math500_rows)
    ) as server:
        config = compose(
            [
                "experiment=math500_open_vs_frontier",
                f"task.source={MATH500_DIR}",
                f"task.n_test={N}",
                "compare.ks=[1,2]",
                "compare.api.requests_per_minute=null",
            ],
            root=tmp_path,
            tiny=False,
        )
        config["compare"]["contestants"] = {"frontier": api | {"base_url": server.base_url}}
        result = run_stage("compare", config, start_pipeline_run(config, None), {}, None)
        chats = [c for c in server.requests if "messages" in c]
    s = result.details["contestants"]["frontier"]
    assert s["status"] == "ok" and s["n_problems"] == N

    # the chat turn is the zero-shot instruction and the bare problem (no Minerva examples)
    system, user = chats[0]["messages"][0]["content"], chats[0]["messages"][-1]["content"]
    assert system == "Please reason step by step, and put your final answer within \\boxed{}."
    assert user.strip() in math500_rows and "Final Answer" not in user

    levels = {q: r["level"] for q, r in math500_rows.items()}
    asked = [levels[q] for q in math500_rows if any(q == c["messages"][-1]["content"].strip() for c in chats)]
    assert len(asked) == N and set(asked) == {1, 2, 3, 4, 5}  # a level-stratified draw

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    run = client.get_run(s["run_id"])
    m = run.data.metrics
    assert m["compare/acc_greedy"] == pytest.approx(sum(lv <= 2 for lv in asked) / N)
    assert m["compare/level_1/acc_greedy"] == m["compare/level_2/acc_greedy"] == 1.0
    assert m["compare/level_3/acc_greedy"] == m["compare/level_4/acc_greedy"] == m["compare/level_5/acc_greedy"] == 0
    assert m["compare/no_answer_frac"] == pytest.approx(asked.count(3) / N)  # the unclosed thinking blocks
    subjects = {k for k in m if re.fullmatch(r"compare/subject_[a-z_]+/acc_greedy", k)}
    assert len(subjects) >= 3
    assert m["compare/cost_usd"] == pytest.approx(server.spent_usd) and m["compare/cost_usd"] > 0

    parent_md = Path(client.download_artifacts(result.run_id, "compare/comparison.md", str(tmp_path / "md")))
    text = parent_md.read_text()
    assert "Greedy accuracy by level and subject" in text and "| level | 1 | 1.000 |" in text
    by = Path(client.download_artifacts(result.run_id, "compare/breakdown.csv", str(tmp_path / "csv")))
    assert "subject" in by.read_text()
