"""ZeRO-2 / ZeRO-3 on 2 CPU processes (gloo): sharded optimizer state, same losses as 1 process."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("zero_worker.py")


def run_worker(out: Path, stage: int, nproc: int) -> list[dict]:
    from thinkflow.distributed.launch import free_port

    if nproc == 1:
        cmd = [sys.executable, str(WORKER), str(out), str(stage)]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            str(WORKER),
            str(out),
            str(stage),
        ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(nproc)]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    return run_worker(tmp_path_factory.mktemp("single") / "out", 0, 1)[0]


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_shards_optimizer_state_and_matches_one_process(stage, single, tmp_path):
    ranks = run_worker(tmp_path / "out", stage, 2)
    assert single["state_numel"] == single["n_params"]  # one process holds all the Adam state
    for r in ranks:
        share = r["state_numel"] / r["n_params"]
        assert 0.4 < share < 0.6, f"rank {r['rank']} holds {share:.2f} of the optimizer state under ZeRO-{stage}"
    assert sum(r["state_numel"] for r in ranks) >= single["n_params"]
    losses = ranks[0]["losses"]  # averaged over ranks by the learner, logged by rank 0
    assert len(losses) == len(single["losses"]) == 3
    assert losses == pytest.approx(single["losses"], rel=1e-3, abs=1e-4)
    assert single["losses"][0] != single["losses"][-1]  # the weights moved between steps
