"""SFT examples as token ids: completion-only labels, padded or packed batches, weighted source mixing.

An example is ``<bos> prompt completion <eos>``; the prompt's length in tokens comes from the tokenizer (the
prompt is tokenized on its own and the completion pieces after it, so the mask falls on a token boundary
whatever the tokenizer), and its labels are -100 (no loss). Packing (``sft.packing``) puts a batch's
examples side by side in rows of up to the model context: each example restarts its positions at 0 and a
block-diagonal causal mask keeps its tokens from attending to its neighbours', so the loss equals the
padded batch's (same target tokens, same mean) with less padding.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from thinkflow.training import IGNORE, pad_batch

PACKING_ATTENTION = ("sdpa", "eager")  # implementations that take a 4D mask as given


def encode(tokenizer, prompts: list[str], segments: list[list[tuple[str, bool]]]) -> list[dict]:
    """Token ids and labels per example. ``segments``: the completion as (text, trained) pieces; pieces the
    model reads but does not write (an environment's observations) are masked like the prompt."""
    prompt_ids = tokenizer(prompts).input_ids  # with <bos>
    flat = [text for seg in segments for text, _ in seg]
    pieces = iter(tokenizer(flat, add_special_tokens=False).input_ids if flat else [])
    eos = tokenizer.eos_token_id
    out = []
    for prompt, seg in zip(prompt_ids, segments, strict=True):
        ids, labels = list(prompt), [IGNORE] * len(prompt)
        for _, trained in seg:
            piece = next(pieces)
            ids += piece
            labels += piece if trained else [IGNORE] * len(piece)
        out.append({"input_ids": ids + [eos], "labels": labels + [eos]})
    return out


class ExampleDataset(Dataset):
    def __init__(self, examples: list[dict]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return self.examples[i]


def mixing_sampler(sources: list[str], weights: dict[str, float], n_samples: int, seed: int) -> WeightedRandomSampler:
    """Draws ``n_samples`` examples with replacement so that source ``s`` supplies a ``weights[s] / sum`` share
    (each of its examples equally likely). ``sources``: the source of each example, in dataset order."""
    counts = {s: sources.count(s) for s in set(sources)}
    total = sum(weights[s] for s in counts)
    per_example = [weights[s] / total / counts[s] for s in sources]
    gen = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(per_example, n_samples, replacement=True, generator=gen)


def collate_padded(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: ``input_ids``, ``labels``, ``attention_mask`` (B, T), ``seq_lens`` (B,)."""
    padded = pad_batch(batch, pad_id)
    return padded | {"seq_lens": padded["attention_mask"].sum(-1)}


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: example indices per row, each row's lengths summing to at most ``capacity``."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        if lengths[i] > capacity:
            raise ValueError(f"an example of {lengths[i]} tokens does not fit the packing capacity of {capacity}")
        row = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if row is None:
            rows.append([])
            room.append(capacity)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= lengths[i]
    return rows


def collate_packed(batch: list[dict], pad_id: int, capacity: int) -> dict[str, torch.Tensor]:
    """The batch's examples packed into rows of up to ``capacity`` tokens: ``input_ids``, ``labels``,
    ``position_ids`` (restarting at 0 per example) and ``segment_ids`` (R, W): the example each token belongs
    to, -1 for padding; ``seq_lens`` (B,). ``packed_attention_mask`` turns the segments into the 4D mask."""
    lengths = [len(ex["input_ids"]) for ex in batch]
    rows = pack_rows(lengths, capacity)
    width = max(sum(lengths[i] for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            n = lengths[i]
            ids[r, at : at + n] = torch.tensor(batch[i]["input_ids"])
            labels[r, at : at + n] = torch.tensor(batch[i]["labels"])
            positions[r, at : at + n] = torch.arange(n)
            segments[r, at : at + n] = i
            at += n
        positions[r, at:] = torch.arange(width - at)  # padding: its own block, never attended to
    return {
        "input_ids": ids,
        "labels": labels,
        "position_ids": positions,
        "segment_ids": segments,
        "seq_lens": torch.tensor(lengths),
    }


def packed_attention_mask(segment_ids: torch.Tensor, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """(R, 1, W, W) block-diagonal causal mask: token q sees token k iff k <= q and both are in one example
    (padding forms its own block, so no row is fully masked). ``sdpa`` takes it as booleans (True = attend);
    ``eager`` adds it to the scores, so it gets 0 / the dtype's minimum."""
    if attn_implementation not in PACKING_ATTENTION:
        raise ValueError(
            f"sft.packing needs attention that takes a 4D mask ({', '.join(PACKING_ATTENTION)}); this model uses "
            f"{attn_implementation!r}: set sft.packing=false"
        )
    width = segment_ids.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=segment_ids.device).tril()  # (W, W)
    allowed = (segment_ids[:, :, None] == segment_ids[:, None, :]) & causal  # (R, W, W)
    if attn_implementation == "sdpa":
        return allowed[:, None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def model_inputs(batch: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """What the HF model's forward takes from a padded or packed batch."""
    inputs = {k: v for k, v in batch.items() if k not in ("segment_ids", "seq_lens")}
    if "segment_ids" in batch:
        dtype = next(model.parameters()).dtype
        inputs["attention_mask"] = packed_attention_mask(batch["segment_ids"], model.config._attn_implementation, dtype)
    return inputs
