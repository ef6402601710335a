"""The "GPU check" section of docs/benchmarks.md from a ``benchmarks/gpu_check.sh`` root: per check, whether it
ran, its stages' wall times and headline metrics (from each run's MLflow store), peak GPU memory.

    python -m benchmarks.gpu_report /tmp/gpu_check.XXXX
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.common import write_section

CHECKS = ("zero2", "zero3", "vllm", "gemma_lora", "gemma_full")


def _runs(root: Path) -> dict[str, dict]:
    """Stage -> (wall s, metrics) of the check's pipeline run, from its MLflow store."""
    db = root / "mlruns" / "mlflow.db"
    if not db.exists():
        return {}
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("thinkflow")
    out = {}
    for run in client.search_runs([exp.experiment_id]) if exp else []:
        stage = run.data.tags.get("stage")
        if stage and run.info.end_time:
            out[stage] = {"wall_s": (run.info.end_time - run.info.start_time) / 1000, **run.data.metrics}
    return out


def main(root: str) -> None:
    base = Path(root)
    gpus = (base / "gpus.txt").read_text().strip() if (base / "gpus.txt").exists() else "unknown"
    rows = []
    for check in CHECKS:
        status = (base / f"{check}.status").read_text().strip() if (base / f"{check}.status").exists() else "not run"
        for stage, m in _runs(base / check).items():
            numbers = ", ".join(
                f"{k.split('/', 1)[-1]} {m[k]:.3g}"
                for k in ("rl/val_pass@1", "pretrain/final_val_acc", "profile/peak_gpu_mb")
                if k in m
            )
            rows.append(f"| {check} | {status} | {stage} | {m['wall_s']:.0f} s | {numbers} |")
        if not _runs(base / check):
            rows.append(f"| {check} | {status} | | | |")
    body = f"""## GPU check

`bash benchmarks/gpu_check.sh` on {gpus}: DeepSpeed ZeRO-2/3 on every GPU, the vLLM GPU backend with weight
refresh, Gemma 3 270M RL steps in bf16 with LoRA and full fine-tuning.

| check | status | stage | wall | figures |
|---|---|---|---:|---|
""" + "\n".join(rows)
    write_section("gpu_check", body)
    print(body)


if __name__ == "__main__":
    main(sys.argv[1])
