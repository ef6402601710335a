"""A bad override or bad data stops ``python flows/pipeline.py`` with one message naming the key or the file
and line: no traceback, before the temporary Prefect server starts (no flow run is recorded)."""

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT


def _run(tmp_path, *args: str) -> tuple[int, str]:
    """Exit status and output of the pipeline CLI, which must end well before the ~20 s a Prefect server takes."""
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "flows/pipeline.py", *args, f"paths.root={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert time.monotonic() - t0 < 30, out[-3000:]  # a few seconds of imports; a Prefect server is ~20 s more
    assert "Starting temporary server" not in out and "Traceback" not in out, out[-3000:]
    assert not (tmp_path / "mlruns" / "mlflow.db").exists() and not (tmp_path / "mlruns" / "work").exists()
    return proc.returncode, out


@pytest.mark.parametrize(
    "override,message",
    [
        ("pretrain.max_steps=abc", "pretrain.max_steps: Input should be a valid integer"),
        ("model.n_heads=3", "model: n_heads=3 must divide d_model=32"),
    ],
)
def test_a_bad_override_is_one_message_before_anything_starts(tmp_path, override, message):
    code, out = _run(tmp_path, "experiment=tiny", override)
    assert code != 0 and out.count(message) == 1, out[-3000:]


def test_bad_gsm8k_data_names_the_file_and_line_before_anything_starts(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    good = json.dumps({"question": "q?", "answer": "1+1=2\n#### 2"})
    (data / "train.jsonl").write_text(good + "\n")
    (data / "test.jsonl").write_text(good + '\n{"question": "q2?", "answer": "#### 3"\n')  # line 2: no closing brace
    code, out = _run(tmp_path, "experiment=tiny", "task=gsm8k", f"task.source={data}")
    assert code != 0 and out.count(f"{data / 'test.jsonl'}, line 2: bad JSON") == 1, out[-3000:]


def test_a_sweep_with_a_bad_job_stops_before_its_first_job(tmp_path):
    code, out = _run(tmp_path, "-m", "experiment=tiny", "pretrain.max_steps=10,abc")
    assert code != 0 and out.count("sweep job 1 (") == 1 and out.count("pretrain.max_steps: Input should be") == 1
