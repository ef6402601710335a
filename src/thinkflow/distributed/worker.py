"""One rank of a multi-process stage (started by ``launch`` through torchrun):

python -m torch.distributed.run --nproc_per_node 2 -m thinkflow.distributed.worker SPEC RESULT
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from thinkflow import quiet
from thinkflow.config import validate
from thinkflow.distributed.ranks import NullTracker, close_process_group, is_rank_zero
from thinkflow.profile.ledger import stage_ledger
from thinkflow.registry import StageResult, stage_spec
from thinkflow.runner import open_tracker
from thinkflow.stages import StageContext
from thinkflow.tracking import write_json


def main(spec_path: str, result_path: str) -> None:
    # DeepSpeed's launcher gives each process its node's index as CROSS_RANK; Lightning reads NODE_RANK
    # (torchrun sets GROUP_RANK, which Lightning reads too).
    if "CROSS_RANK" in os.environ:
        os.environ.setdefault("NODE_RANK", os.environ["CROSS_RANK"])
    quiet.silence()
    spec = json.loads(Path(spec_path).read_text())
    cfg = validate(spec["config"])
    tracker = open_tracker(cfg) if is_rank_zero() else NullTracker()
    upstream = {name: StageResult.model_validate(r) for name, r in spec["upstream"].items()}
    ctx = StageContext(tracker, spec["run_id"], spec["parent_run_id"], upstream)
    with stage_ledger() as ledger:
        result = stage_spec(spec["stage"]).run(cfg, ctx)
    compute = ledger.reduce().as_dict()  # every rank: a collective sum of the ranks' compute
    if is_rank_zero():
        write_json(result_path, result.model_dump() | {"profile": {"phases": compute}})
    close_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
    # The work is done and its result written (after a collective every rank joined). Leave without the
    # interpreter's teardown: destroying gloo's C++ threads there now and then aborts the rank ("terminate called
    # without an active exception", SIGABRT), which torchrun reports as a failed stage even after a clean
    # destroy_process_group (seen under load on a finished rl stage).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
