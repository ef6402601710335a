"""The ``hf`` backend: batched sampling with a KV cache on any HF causal LM.

Prompts are left-padded and prefilled once; for ``n`` samples per prompt the prompt's KV cache
is copied ``n`` times instead of recomputed (prefix sharing). Rows that finish are dropped
from the batch so the decode step only pays for live sequences.
"""

from __future__ import annotations

import torch

from thinkflow.inference.types import GenerationError, Sample, SamplingParams


class HFEngine:
    def __init__(self, model, tokenizer, max_batch: int = 512) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.eos_ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        self.max_len = getattr(model.config, "max_position_embeddings", None)

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Sample]]:
        """For each prompt, ``params.n`` samples, in prompt order."""
        params.validate()
        if not prompts:
            raise GenerationError("generate needs at least one prompt, got an empty list")
        gen = torch.Generator().manual_seed(params.seed)
        per_chunk = max(1, self.max_batch // params.n)
        out: list[list[Sample]] = []
        for start in range(0, len(prompts), per_chunk):
            out.extend(self._generate_chunk(prompts[start : start + per_chunk], params, gen, start))
        return out

    @torch.inference_mode()
    def _generate_chunk(self, prompts, params, gen, offset) -> list[list[Sample]]:
        enc = self.tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
        ids, attn = enc.input_ids, enc.attention_mask  # (B, T)
        prompt_lens = attn.sum(-1).tolist()
        if self.max_len and ids.shape[1] + params.max_new_tokens > self.max_len:
            raise GenerationError(
                f"prompt of {ids.shape[1]} tokens + max_new_tokens={params.max_new_tokens} exceeds the "
                f"model context of {self.max_len} tokens"
            )
        n, batch = params.n, ids.shape[0]
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(
            input_ids=ids,
            attention_mask=attn,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]  # (B, V)
        if n > 1:  # prefix sharing: one prefill, n copies of its KV
            cache.batch_repeat_interleave(n)
            logits, attn = logits.repeat_interleave(n, 0), attn.repeat_interleave(n, 0)
        rows = torch.arange(batch * n)  # output slot of each live row
        next_pos = attn.sum(-1)  # (R,) position of the next token
        toks = torch.zeros(batch * n, params.max_new_tokens, dtype=torch.long)
        lps = torch.zeros(batch * n, params.max_new_tokens)
        lengths = torch.zeros(batch * n, dtype=torch.long)
        finish = ["length"] * (batch * n)
        eos = torch.tensor(sorted(self.eos_ids)) if self.eos_ids else None
        for step in range(params.max_new_tokens):
            tok, tok_lp = _pick(logits, params, gen)
            toks[rows, step], lps[rows, step] = tok, tok_lp
            lengths[rows] = step + 1
            done = torch.isin(tok, eos) if eos is not None else torch.zeros_like(tok, dtype=torch.bool)
            if params.stop:
                done |= self._hit_stop(toks, rows, step + 1, params.stop)
            for r in rows[done].tolist():
                finish[r] = "stop"
            if step + 1 == params.max_new_tokens:
                break
            if done.any():
                keep = (~done).nonzero().squeeze(-1)
                if keep.numel() == 0:
                    break
                cache.batch_select_indices(keep)
                rows, tok, attn, next_pos = rows[keep], tok[keep], attn[keep], next_pos[keep]
            attn = torch.cat([attn, attn.new_ones(attn.shape[0], 1)], dim=1)
            logits = self.model(
                input_ids=tok[:, None],
                attention_mask=attn,
                position_ids=next_pos[:, None],
                past_key_values=cache,
                use_cache=True,
            ).logits[:, -1]
            next_pos = next_pos + 1
        return self._collect(toks, lps, lengths, finish, prompt_lens, params, offset)

    def _hit_stop(self, toks, rows, length, stops) -> torch.Tensor:
        window = max(len(s) for s in stops) + 2
        tails = self.tokenizer.batch_decode(toks[rows, max(0, length - window) : length])
        return torch.tensor([any(s in t for s in stops) for t in tails])

    def _collect(self, toks, lps, lengths, finish, prompt_lens, params, offset) -> list[list[Sample]]:
        out = []
        for b, plen in enumerate(prompt_lens):
            group = []
            for r in range(b * params.n, (b + 1) * params.n):
                k = int(lengths[r])
                ids = toks[r, :k].tolist()
                text = self.tokenizer.decode([t for t in ids if t not in self.eos_ids], skip_special_tokens=True)
                for s in params.stop:  # the stop string ends the text, like vLLM
                    if s in text:
                        text = text[: text.index(s)]
                group.append(Sample(offset + b, text, ids, lps[r, :k].tolist(), finish[r], plen))
            out.append(group)
        return out


def _pick(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator):
    """Next token per row and its log-prob under the raw (temperature-1) distribution."""
    logits = logits.float()
    raw_lp = torch.log_softmax(logits, dim=-1)
    if params.temperature == 0:
        tok = logits.argmax(-1)
    else:
        scores = logits / params.temperature
        if params.top_k:
            kth = scores.topk(min(params.top_k, scores.shape[-1]), dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if params.top_p < 1:
            sorted_s, idx = scores.sort(dim=-1, descending=True)
            cum = sorted_s.softmax(-1).cumsum(-1)
            drop = cum - sorted_s.softmax(-1) >= params.top_p  # keep the smallest set reaching top_p
            scores = scores.scatter(-1, idx, sorted_s.masked_fill(drop, float("-inf")))
        tok = torch.multinomial(scores.softmax(-1), 1, generator=gen).squeeze(-1)
    return tok, raw_lp.gather(-1, tok[:, None]).squeeze(-1)
