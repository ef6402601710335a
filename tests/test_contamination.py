"""Contamination check on the real GSM8K and MATH-500 files, a real MLflow SQLite store, the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from thinkflow.contamination import (
    ContaminationError,
    EvalIndex,
    check,
    check_training_problems,
    main,
    ngrams,
    normalize,
)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(gsm8k_dir) -> dict[str, list[dict]]:
    math500 = gsm8k_dir.parent / "math500" / "test.jsonl"
    if not math500.exists():
        pytest.fail(f"MATH-500 missing at {math500} (set THINKFLOW_SHARED to the shared/ folder)")
    return {
        "gsm8k_train": read(gsm8k_dir / "train.jsonl"),
        "gsm8k_test": read(gsm8k_dir / "test.jsonl"),
        "math500": read(math500),
    }


@pytest.fixture
def planted(tmp_path, data) -> tuple[Path, list[dict]]:
    """Training rows: three clean GSM8K train rows, one MATH-500 and one GSM8K test problem reformatted
    (case, whitespace, LaTeX delimiters and punctuation) inside longer text, and a short synthetic prompt."""
    math = data["math500"][1]["problem"]  # \[p = \sum_{k = 1}^\infty \frac{1}{k^2} \quad \text{and} ...
    math = math.replace("\\[", " $$ ").replace("\\]", "$$\n").replace("\\frac", "\\dfrac").replace("\\quad", "  ")
    gsm = data["gsm8k_test"][0]["question"].replace("’", "'").replace(". ", ".\n\n").lower()  # Janet’s ducks ...
    clean = data["gsm8k_train"][:3]
    rows = [
        clean[0],
        {"question": f"Warm-up problem!!   {math.upper()}   (Show your work.)", "answer": "#### 0"},
        clean[1],
        {"question": f"Here is a story; read it twice.\n{gsm}\nThink step by step.", "answer": "#### 18"},
        {"question": "0347 * 6 =", "answer": "2082"},
        clean[2],
    ]
    return write(tmp_path / "train.jsonl", rows), rows


def test_normalize_ignores_layout_but_keeps_operators():
    assert (
        normalize("Janet’s  ducks,\nlay 1,000 eggs!")
        == normalize("JANET'S DUCKS LAY 1000 EGGS")
        == ["janets", "ducks", "lay", "1000", "eggs"]
    )
    assert (
        normalize(r"$\left( 3, \dfrac{\pi}{2} \right)$") == normalize(r"(3, \frac{\pi}{2})") == ["3", "frac", "pi", "2"]
    )
    assert normalize(r"20 \text{ cm}, two-thirds") == ["20", "cm", "two", "thirds"]
    assert normalize("0347*6=") == ["0347", "*", "6", "="] != normalize("0347+6=")  # different problems
    assert ngrams(["a", "b", "c"], 2) == [("a", "b"), ("b", "c")] and ngrams(["a"], 2) == []


def test_planted_problems_are_found_and_point_at_their_source(planted, data):
    path, rows = planted
    index = EvalIndex.build(
        {
            "math500/test": [r["problem"] for r in data["math500"]],
            "gsm8k/test": [r["question"] for r in data["gsm8k_test"]],
            "multiply": ["0347*6=", "0347+6="],
        },
        ids={"math500/test": [r["unique_id"] for r in data["math500"]]},
    )
    report = check((("sft", r["question"]) for r in rows), index)
    rep = report.sources["sft"]
    assert (rep.checked, rep.contaminated, rep.flagged) == (6, 3, [1, 3, 4])
    assert rep.hits == {"math500/test": 1, "gsm8k/test": 1, "multiply": 1}
    assert rep.problems_hit == {"math500/test": [1], "gsm8k/test": [0], "multiply": [0]}
    (math,) = index.find(rows[1]["question"])
    assert (math.problem_id, math.kind, math.matched) == ("test/intermediate_algebra/1994.json", "ngram", math.total)
    (gsm,) = index.find(rows[3]["question"])
    assert (gsm.task, gsm.problem, gsm.kind) == ("gsm8k/test", 0, "ngram") and gsm.matched == gsm.total
    assert "1994.json" in report.describe() and json.loads(json.dumps(report.to_dict()))["contaminated"] == 3


def test_short_problems_are_matched_exactly(data):
    index = EvalIndex.build(
        {"multiply": ["0347*6=", "0347+6="], "math500/test": [r["problem"] for r in data["math500"]]}
    )
    (hit,) = index.find(" 0347 *6 = ")
    assert (hit.task, hit.problem, hit.kind) == ("multiply", 0, "exact")
    assert index.find("0347-6=") == [] and index.find("0347*6=2082") == []  # a trace is not the problem
    (short,) = index.find("SIMPLIFY \\sqrt{242}")  # MATH-500's "Simplify $\sqrt{242}$." (3 tokens)
    assert (short.task, short.problem, short.kind) == ("math500/test", 31, "exact")
    # Documented limit: a problem shorter than n inside a longer text is not caught.
    assert index.find("Warm-up: simplify sqrt 242, then explain every step you take in words.") == []


def test_clean_data_and_what_gsm8k_train_vs_test_shares(data):
    train = [r["question"] for r in data["gsm8k_train"]]
    start = time.perf_counter()
    index = EvalIndex.build({"gsm8k/test": [r["question"] for r in data["gsm8k_test"]]})
    report = check((("gsm8k/train", t) for t in train), index)
    seconds = time.perf_counter() - start
    print(f"index build + check, GSM8K train ({len(train)}) vs test ({len(index)}): {seconds:.2f} s")
    # Not verbatim copies: four train questions share a 13-gram with three test questions written from the same
    # template with other names and numbers (Bella/Max stamps share 13 of the test problem's 44 13-grams).
    rep = report.sources["gsm8k/train"]
    assert rep.flagged == [20, 406, 1314, 5162] and rep.problems_hit == {"gsm8k/test": [581, 602, 632]}
    math = EvalIndex.build({"math500/test": [r["problem"] for r in data["math500"]]})
    assert check((("gsm8k/train", t) for t in train), math).contaminated == 0


def test_check_training_problems_actions(data):
    evals = {"math500/test": [r["problem"] for r in data["math500"][:50]], "multiply": ["0347*6="]}
    train = ["What is 2 + 2?", data["math500"][2]["problem"].upper(), "0347*6=", "Name a prime above 10."]
    report = check_training_problems(train, evals, action="report")
    assert report.contaminated == 2 and report.kept == [0, 3]
    assert check_training_problems(train, evals, action="drop").kept == [0, 3]
    with pytest.raises(ContaminationError, match=r"2 of 4 training problems.*math500/test problem 2 .*multiply"):
        check_training_problems(train, evals, action="fail")
    with pytest.raises(ContaminationError, match="removed all 2"):
        check_training_problems(train[1:3], evals, action="drop")
    assert check_training_problems(train[::3], evals, action="fail").kept == [0, 1]
    with pytest.raises(ValueError, match="action must be one of"):
        check_training_problems(train, evals, action="warn")


def test_cli_drop_writes_only_clean_rows(planted, gsm8k_dir, tmp_path, capsys):
    path, rows = planted
    math500 = gsm8k_dir.parent / "math500" / "test.jsonl"
    out = tmp_path / "clean" / "train.jsonl"
    argv = ["--train", f"sft={path}", "--eval", str(math500), "--eval", str(gsm8k_dir / "test.jsonl")]
    assert main([*argv, "--action", "drop", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sft" in printed and "math500/test (1 / 1), gsm8k/test (1 / 1)" in printed and "2 dropped" in printed
    assert read(out) == [rows[0], rows[2], rows[4], rows[5]]  # the short prompt is no eval problem here
    with pytest.raises(SystemExit):
        main([*argv, "--out", str(out)])  # --out only with drop


def test_cli_fail_exits_nonzero(planted, gsm8k_dir, tmp_path):
    path, _ = planted
    cmd = [
        sys.executable,
        "-m",
        "thinkflow.contamination",
        "--train",
        f"sft={path}",
        "--eval",
        str(gsm8k_dir.parent / "math500"),
        "--eval",
        str(gsm8k_dir / "test.jsonl"),
        "--field",
        "question",
        "--field",
        "problem",
        "--action",
        "fail",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "sft[1] overlaps math500 problem test/intermediate_algebra/1994.json" in proc.stderr
    cmd[cmd.index("--train") + 1] = str(write(tmp_path / "clean.jsonl", [{"question": "Name a prime above 10."}]))
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=120).returncode == 0
    cmd[cmd.index("--train") + 1] = str(write(tmp_path / "other.jsonl", [{"prompt": "Name a prime above 10."}]))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # not the fields asked for: exit 2
    assert proc.returncode == 2 and "has none of the fields ['question', 'problem'] (it has ['prompt'])" in proc.stderr


def test_cli_logs_counts_and_report_to_mlflow(planted, gsm8k_dir, tmp_path):
    from mlflow import MlflowClient

    path, _ = planted
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("contamination", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    argv = [
        "--train",
        f"sft={path}",
        "--eval",
        str(gsm8k_dir.parent / "math500"),
        "--eval",
        str(gsm8k_dir / "test.jsonl"),
        "--mlflow-run",
        run_id,
        "--tracking-uri",
        uri,
    ]
    assert main(argv) == 0  # action report
    metrics = client.get_run(run_id).data.metrics
    assert metrics["contamination/sft/checked"] == 6 and metrics["contamination/sft/overlapping"] == 2
    report = json.loads(Path(client.download_artifacts(run_id, "contamination/report.json", str(tmp_path))).read_text())
    assert report["sources"]["sft"]["flagged"] == [1, 3] and report["eval_tasks"] == {
        "math500": 500,
        "gsm8k/test": 1319,
    }
    assert report["sources"]["sft"]["examples"][0]["overlaps"][0]["problem_id"] == "test/intermediate_algebra/1994.json"
