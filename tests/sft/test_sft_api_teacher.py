"""An API teacher for the sft stage, behind the local OpenAI-compatible test server: traces bought through the API
client (priced, verified, with provenance), a rerun buys nothing (the response cache), the spend cap is honoured
(what was bought is trained on), a killed stage resumes without buying again, and a teacher that cannot be
reached fails the stage with the reason."""

import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.compare.openai_server import ScriptedOpenAIServer
from tests.conftest import ROOT, compose
from thinkflow.checkpoints import save_hf
from thinkflow.config import validate
from thinkflow.models import build_model_and_tokenizer
from thinkflow.runner import run_stage, start_pipeline_run
from thinkflow.sft.sources import SFTDataError

KEY = "sft-teacher-test-key"
N = 32  # training problems; k = 2 samples each
PRICES = {"usd_per_mtok_in": 2000.0, "usd_per_mtok_out": 8000.0}  # a visible bill for a few tokens


def _teacher(accuracy: float = 0.75, latency_s: float = 0.0) -> ScriptedOpenAIServer:
    """Answers 1-digit addition as '>SUM', right with probability ``accuracy`` (a hash of the question and the
    draw decides), else one off."""

    def respond(prompt: str, seed: int, temperature: float) -> str:
        a, b = re.findall(r"(\d+)\+(\d+)=", prompt)[-1]
        u = int.from_bytes(hashlib.sha256(f"{a}+{b}|{seed}|{temperature}".encode()).digest()[:8], "big") / 2**64
        return f">{int(a) + int(b) + (0 if u < accuracy else 1)}"

    return ScriptedOpenAIServer(respond=respond, api_key=KEY, latency_s=latency_s, **PRICES)


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> str:
    """A random tiny model: everything it learns here comes from the teacher's traces."""
    config = validate(compose(["task=addition", "task.difficulty=1"]))
    out = tmp_path_factory.mktemp("student") / "hf"
    return str(save_hf(*build_model_and_tokenizer(config.model.model_dump(), seed=0), out))


def _config(root: Path, init: str, base_url: str, *extra: str) -> dict:
    teacher = (
        f"{{kind: openai, base_url: '{base_url}', model: scripted, api_key_env: THINKFLOW_SFT_KEY, prompt: chat, "
        f"usd_per_mtok_in: {PRICES['usd_per_mtok_in']}, usd_per_mtok_out: {PRICES['usd_per_mtok_out']}}}"
    )
    overrides = [
        "seed=1",
        "task=addition",
        "task.difficulty=1",
        "sft=default",
        f"sft.init_from={init}",
        "sft.sources.gold=null",
        "sft.sources.self=null",
        f"+sft.sources.api={{kind: teacher, weight: 1.0, k: 2, max_per_problem: 1, teacher: {teacher}}}",
        f"sft.n_problems={N}",
        "sft.max_steps=6",
        "sft.batch_size=8",
        "sft.warmup_steps=1",
        "sft.eval_every=6",
        "sft.ckpt_every=6",
        "sft.max_new_tokens=8",
        "sft.eval_max_new_tokens=8",
        "sft.api.concurrency=2",
        "sft.api.requests_per_minute=null",
        *extra,
    ]
    return compose(overrides, root=root) | {"pretrain": None, "rl": None, "ttc": None, "compare": None}


def _sft(config: dict):
    return run_stage("sft", config, start_pipeline_run(config, None), {}, None)


def test_an_api_teacher_is_bought_once_priced_verified_and_capped(student, tmp_path, monkeypatch):
    monkeypatch.setenv("THINKFLOW_SFT_KEY", KEY)
    with _teacher() as server:
        result = _sft(_config(tmp_path, student, server.base_url))
        bought, bill = sum(server.paid.values()), server.spent_usd
        assert bought == N * 2 and server.duplicates == 0
        table = pd.read_parquet(Path(result.checkpoint).parent / "provenance" / "provenance.parquet")
        assert len(table) == N * 2 and set(table.kind) == {"teacher"}
        assert set(table.model) == {f"openai:scripted at {server.base_url}"} and (table.cost_usd > 0).all()
        assert table.cost_usd.sum() == pytest.approx(bill)  # each trace carries its price
        kept = table[table.status == "kept"]
        assert len(kept) == table[table.verdict].problem_id.nunique() > N // 2  # one verified trace per problem
        assert set(table[~table.verdict].status) == {"wrong"} and all(kept.completion.str.startswith(">"))
        metrics = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db").get_run(result.run_id).data.metrics
        assert metrics["sft/api_paid_calls/api"] == N * 2 and metrics["sft/teacher_cost_usd/api"] == pytest.approx(bill)
        assert 0.5 < metrics["sft/accept_rate/api"] < 1.0 and metrics["sft/examples"] == len(kept)

        # a rerun with other training settings samples the same traces: all from the cache, nothing bought
        again = _sft(_config(tmp_path, student, server.base_url, "sft.max_steps=8", "sft.ckpt_every=8"))
        assert sum(server.paid.values()) == bought and server.spent_usd == bill
        metrics = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db").get_run(again.run_id).data.metrics
        assert metrics["sft/api_cache_hits/api"] == N * 2 and metrics["sft/api_paid_calls/api"] == 0

        # a spend cap (fresh cache): the calls that fit are bought and trained on, the rest never sent
        cap = 0.6
        capped = _config(
            tmp_path, student, server.base_url, f"sft.api.spend_cap_usd={cap}", f"sft.api.cache={tmp_path}/cap.sqlite"
        )
        result = _sft(capped)
        spent = server.spent_usd - bill
        assert 0 < spent <= cap and 0 < sum(server.paid.values()) - bought < N * 2
        table = pd.read_parquet(Path(result.checkpoint).parent / "provenance" / "provenance.parquet")
        assert 0 < len(table) < N * 2 and (table.status == "kept").any()


def test_a_teacher_that_cannot_be_reached_fails_the_stage_with_the_reason(student, tmp_path, monkeypatch):
    monkeypatch.setenv("THINKFLOW_SFT_KEY", KEY)
    config = _config(tmp_path, student, "http://127.0.0.1:9/v1", "sft.api.max_retries=0", "sft.api.timeout_s=2")
    with pytest.raises(SFTDataError, match=r"teacher of source 'api' \(openai:scripted at http://127.0.0.1:9/v1\)"):
        _sft(config)
    monkeypatch.delenv("THINKFLOW_SFT_KEY")
    with pytest.raises(SFTDataError, match="THINKFLOW_SFT_KEY"):
        _sft(config)


@pytest.mark.slow
def test_a_killed_sft_stage_resumes_without_buying_again(student, tmp_path):
    """SIGKILL the stage's process mid-way through the teacher's calls, rerun it: what the cache holds is not bought
    again; only calls in flight at the kill (billed, never received) can be."""
    env = os.environ | {"THINKFLOW_SFT_KEY": KEY, "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"}
    script = (
        "import json, sys; from thinkflow.runner import run_stage, start_pipeline_run; "
        "c = json.load(open(sys.argv[1])); run_stage('sft', c, start_pipeline_run(c, None), {}, None)"
    )
    with _teacher(latency_s=0.1) as server:
        spec = tmp_path / "config.json"
        spec.write_text(json.dumps(_config(tmp_path, student, server.base_url)))
        cmd = [sys.executable, "-c", script, str(spec)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 240
        while sum(server.paid.values()) < 20 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        server.wait_idle()
        paid_at_kill = sum(server.paid.values())
        with sqlite3.connect(tmp_path / "mlruns" / "work" / "sft" / "api_cache.sqlite") as db:
            cached = db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        assert 0 < cached <= paid_at_kill < N * 2

        rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert len(server.paid) == N * 2  # every request bought
    assert server.duplicates == paid_at_kill - cached <= 2  # only the calls in flight (concurrency 2)
    runs = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db").search_runs(["0", "1"], "tags.stage = 'sft'")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == 1 and finished[0].data.metrics["sft/api_cache_hits/api"] == cached
