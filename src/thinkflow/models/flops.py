"""Analytic inference FLOPs of a decoder-only transformer (forward pass only).

Per token: ``2 x matmul parameters`` (every linear layer plus the LM head; embedding lookups
are free) plus the attention term ``4 x layers x n_heads x head_dim x kv_len`` (Q.K^T and the
weighted sum of V over the keys the token attends to). A prompt of T tokens followed by G
generated tokens attends over 1..T+G keys.
"""

from __future__ import annotations

from dataclasses import dataclass

UNGATED_MLP = {"gpt2", "gpt_neox", "gptj", "gpt_bigcode", "opt", "bloom", "falcon", "phi"}  # two MLP matrices


@dataclass(frozen=True)
class FlopModel:
    matmul_params: int  # weights used in matmuls per token, LM head included
    layers: int
    attn_dim: int  # n_heads x head_dim (the query width)

    @classmethod
    def from_config(cls, config) -> FlopModel:
        d, layers = config.hidden_size, config.num_hidden_layers
        heads = config.num_attention_heads
        kv = getattr(config, "num_key_value_heads", None) or heads  # MHA families have no such key
        head_dim = getattr(config, "head_dim", None) or d // heads
        ff = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * d
        mlp = 2 if getattr(config, "model_type", "") in UNGATED_MLP else 3  # up/down, or gate/up/down (SwiGLU, GeGLU)
        per_layer = d * heads * head_dim * 2 + d * kv * head_dim * 2 + mlp * d * ff  # q, o, k, v, the MLP
        return cls(layers * per_layer + config.vocab_size * d, layers, heads * head_dim)

    def tokens(self, first_kv: int, count: int) -> float:
        """FLOPs of ``count`` tokens whose KV lengths run first_kv, first_kv+1, ..."""
        kv_sum = count * first_kv + count * (count - 1) / 2
        return 2.0 * self.matmul_params * count + 4.0 * self.layers * self.attn_dim * kv_sum

    def sequence(self, prompt_tokens: int, gen_tokens: int) -> float:
        """Prefill of the prompt plus decoding of the generated tokens."""
        return self.tokens(1, prompt_tokens) + self.tokens(prompt_tokens + 1, gen_tokens)
