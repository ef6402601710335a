import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from safetensors.torch import load_file

from tests.conftest import ROOT, compose
from thinkflow.catalog import build_task
from thinkflow.config import ConfigError, validate
from thinkflow.models import CheckpointError, build_char_tokenizer
from thinkflow.pretrain.data import IGNORE, collate, encode_examples
from thinkflow.pretrain.stage import pretrain_section, pretrained_checkpoint
from thinkflow.runner import run_stage, start_pipeline_run
from thinkflow.stages import stage_work_dir
from thinkflow.training import warmup_cosine


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100, 0.1) == pytest.approx(0.55)
    assert warmup_cosine(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(500, 10, 100, 0.1) == pytest.approx(0.1)


def test_loss_is_on_the_completion_only():
    task, tok = build_task("addition", 3), build_char_tokenizer()
    problem = task.make(12, 34)
    ds = encode_examples([problem], task, tok)
    ids, labels = ds[0]["input_ids"], ds[0]["labels"]
    n_prompt = len(problem.prompt) + 1  # <bos> + prompt chars
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert tok.decode(labels[n_prompt:-1]) == task.completion(problem) and ids[-1] == tok.eos_token_id
    batch = collate([ds[0], encode_examples([task.make(1, 2)], task, tok)[0]], tok.pad_token_id)
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()


def _run_pretrain(config: dict) -> dict:
    return run_stage("pretrain", config, start_pipeline_run(config, None), {}, None)


def test_pretraining_is_seeded_and_reproducible(tmp_path):
    a = _run_pretrain(compose(root=tmp_path / "a"))
    b = _run_pretrain(compose(root=tmp_path / "b"))
    wa, wb = load_file(f"{a.checkpoint}/model.safetensors"), load_file(f"{b.checkpoint}/model.safetensors")
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    assert a.metrics["val_acc"] == b.metrics["val_acc"] and a.metrics["steps"] == 20
    # what reads the checkpoint without running the stage (benchmarks) looks where the stage exported it
    assert pretrained_checkpoint(validate(compose(root=tmp_path / "a"))) == Path(a.checkpoint)


def test_corrupt_resume_checkpoint_is_refused_and_kept(tmp_path):
    config = compose(root=tmp_path)
    work = stage_work_dir(validate(config), "pretrain", pretrain_section(validate(config)))
    (work / "lightning").mkdir(parents=True)
    bad = work / "lightning" / "last.ckpt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match=f"{bad}.*corrupt"):
        _run_pretrain(config)
    assert bad.read_bytes() == b"PK\x03\x04 truncated"  # nothing overwritten
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("thinkflow").experiment_id], "tags.stage = 'pretrain'")
    assert [r.info.status for r in runs] == ["FAILED"]


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    steps = ["pretrain.max_steps=1500", "pretrain.ckpt_every=25", "pretrain.eval_every=750"]
    args = [sys.executable, "flows/pipeline.py", f"paths.root={tmp_path}", "experiment=tiny", *steps]
    config = validate(compose(steps, root=tmp_path))
    ckpt_dir = stage_work_dir(config, "pretrain", pretrain_section(config)) / "lightning"
    proc = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    # Killed once a checkpoint at step >= 50 exists (older ones are rotated away, so any will do); the run is long
    # enough (1500 steps of the tiny model) that a fast machine cannot finish it between two looks.
    saved = lambda: [int(m[1]) for f in ckpt_dir.glob("*.ckpt") if (m := re.search(r"step=(\d+)", f.name))]  # noqa: E731
    deadline = time.time() + 240
    while max(saved(), default=0) < 50 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before it was killed"
    os.killpg(proc.pid, signal.SIGKILL)  # no clean shutdown: a real crash
    proc.wait()
    assert max(saved(), default=0) >= 50, "no checkpoint was written before the kill"

    rerun = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {ckpt_dir / 'last.ckpt'}" in rerun.stdout + rerun.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("thinkflow").experiment_id
    done = client.search_runs([exp], "tags.stage = 'pretrain' and attributes.status = 'FINISHED'")
    assert len(done) == 1
    logged = [m.step for m in client.get_metric_history(done[0].info.run_id, "train/loss")]
    assert min(logged) >= 50 and max(logged) == 1499  # continued, did not start over


def test_examples_longer_than_the_context_are_a_config_error(tmp_path, gsm8k_dir):
    config = compose(["task=gsm8k", f"task.source={gsm8k_dir}", "task.n_test=4"], root=tmp_path)
    with pytest.raises(ConfigError, match="model.max_seq_len=64 is too short for task 'gsm8k'"):
        _run_pretrain(config)


def test_missing_init_checkpoint_names_the_path(tmp_path):
    config = compose([f"pretrain.init_from={tmp_path / 'absent'}"], root=tmp_path)
    with pytest.raises(CheckpointError, match="absent"):
        _run_pretrain(config)
