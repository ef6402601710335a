"""SFT packing (``sft.packing``) against padding: training tokens/s on the gold traces of several tasks.

    python -m benchmarks.sft_packing                       # addition, countdown, gsm8k (../shared/datasets/gsm8k)
    python -m benchmarks.sft_packing --tasks gsm8k --steps 20

For each task: the default model (``conf/model/tiny.yaml``, its context raised to fit the task's longest
example), its character tokenizer and 1,024 gold-trace examples. The same batches (64 examples each, in the same
order) are trained padded and packed, alternating pair by pair after one warm-up step each, and timed per step
(forward, backward, AdamW). Reported: target tokens per second (the tokens the loss is on, the same for both),
the share of each batch that is padding, and the packed/padded speed ratio with its spread over the pairs.
Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import ROOT, machine_line, write_section
from thinkflow.composition import compose
from thinkflow.config import validate
from thinkflow.models import build_model_and_tokenizer
from thinkflow.sft.data import collate_packed, collate_padded, encode, model_inputs

TASKS = {
    "addition": ["task=addition"],
    "countdown": ["task=countdown"],
    "gsm8k": ["task=gsm8k", f"task.source={ROOT.parent / 'shared' / 'datasets' / 'gsm8k'}"],
}


def examples(overrides: list[str], n: int) -> tuple[list[dict], dict, object]:
    cfg = validate(compose(overrides))
    task = cfg.task.build()
    train, _ = task.splits(n, 16, seed=0)
    model_cfg = cfg.model.model_dump()
    _, tokenizer = build_model_and_tokenizer(model_cfg, seed=0)
    out = encode(tokenizer, [p.prompt for p in train], [task.completion_segments(p) for p in train])
    return out, model_cfg, tokenizer


def step_time(model, optimizer, batch: dict) -> float:
    t0 = time.perf_counter()
    loss = model(**model_inputs(batch, model)).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def measure(name: str, overrides: list[str], steps: int, batch_size: int, n: int) -> dict:
    data, model_cfg, tokenizer = examples(overrides, n)
    longest = max(len(e["input_ids"]) for e in data)
    model_cfg["max_seq_len"] = max(model_cfg["max_seq_len"], longest)
    capacity = model_cfg["max_seq_len"]
    pad = tokenizer.pad_token_id
    batches = [data[i : i + batch_size] for i in range(0, min(len(data), (steps + 1) * batch_size), batch_size)]
    models = {}
    for kind in ("padded", "packed"):
        torch.manual_seed(0)
        model, _ = build_model_and_tokenizer(model_cfg, seed=0)
        model.train()
        models[kind] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    collate = {"padded": lambda b: collate_padded(b, pad), "packed": lambda b: collate_packed(b, pad, capacity)}
    times = {"padded": [], "packed": []}
    cells = {"padded": 0, "packed": 0}
    targets = 0
    for i, batch in enumerate(batches):
        order = ("padded", "packed") if i % 2 == 0 else ("packed", "padded")  # alternate who goes first
        for kind in order:
            b = collate[kind](batch)
            t = step_time(*models[kind], b)
            if i > 0:  # the first step of each is warm-up
                times[kind].append(t)
                cells[kind] += b["input_ids"].numel()
        if i > 0:
            targets += sum(sum(1 for x in e["labels"][1:] if x != -100) for e in batch)
    tokens = sum(len(e["input_ids"]) for b in batches[1:] for e in b)
    speed = {k: targets / sum(v) for k, v in times.items()}
    ratios = [pk / pd for pd, pk in zip(times["padded"], times["packed"], strict=True)]  # time ratio per pair
    return {
        "task": name,
        "examples": len(data),
        "length": f"{min(len(e['input_ids']) for e in data)}-{longest}",
        "capacity": capacity,
        "pad_frac": {k: 1 - tokens / cells[k] for k in cells},
        "tokens_per_s": speed,
        "speedup": speed["packed"] / speed["padded"],
        "pair_time_ratio": (statistics.median(ratios), min(ratios), max(ratios)),
        "steps": len(times["padded"]),
    }


def report(rows: list[dict], batch_size: int) -> str:
    lines = [
        "## SFT packing against padding (`python -m benchmarks.sft_packing`)",
        "",
        f"{machine_line()}. The default model (its context raised to the task's longest example), gold traces, "
        f"{batch_size} examples per step, forward + backward + AdamW; padded and packed steps on the same batches, "
        "alternating pair by pair (first step of each dropped). Target tokens: the tokens the loss is on (equal for "
        "both). Time ratio: packed / padded step time per pair, median [min, max].",
        "",
        "| task | example tokens | context | padding share, padded | padding share, packed | target tokens/s "
        "padded | target tokens/s packed | packed speed-up | time ratio per pair |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        med, lo, hi = r["pair_time_ratio"]
        lines.append(
            f"| {r['task']} | {r['length']} | {r['capacity']} | {r['pad_frac']['padded']:.2f} | "
            f"{r['pad_frac']['packed']:.2f} | {r['tokens_per_s']['padded']:,.0f} | {r['tokens_per_s']['packed']:,.0f} | "
            f"{r['speedup']:.2f}x | {med:.2f} [{lo:.2f}, {hi:.2f}] |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    rows = []
    for name in args.tasks:
        rows.append(measure(name, TASKS[name], args.steps, args.batch_size, args.examples))
        print(rows[-1], flush=True)
    body = report(rows, args.batch_size)
    print(body)
    if not args.no_doc:
        write_section("sft_packing", body)


if __name__ == "__main__":
    main()
