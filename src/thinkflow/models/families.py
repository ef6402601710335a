"""Tiny random-initialised stand-ins for the common open-model families, built locally (no hub): each from its
own ``transformers`` config class, with a byte-level BPE tokenizer trained here and a chat template. They
run every stage as the real families would (their own attention variants, biases, norms, position
embeddings and tokenizer), so a test or a dry run of a pipeline with a non-Llama policy needs no download:

    python -m thinkflow.models.families qwen3 /tmp/tiny-qwen3     # then rl.init_from=/tmp/tiny-qwen3
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

SPECIAL = ("<pad>", "<bos>", "<eos>")  # ids 0, 1, 2
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<eos>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _common(vocab: int, width: int, max_len: int) -> dict:
    return {
        "vocab_size": vocab,
        "hidden_size": width,
        "intermediate_size": 2 * width,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": max_len,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": True,
        "initializer_range": 0.3,  # wide enough that a random model's greedy text varies (0.02 repeats one token)
    }


def _gpt2(vocab: int, width: int, max_len: int) -> PretrainedConfig:
    return GPT2Config(
        vocab_size=vocab,
        n_positions=max_len,
        n_embd=width,
        n_layer=2,
        n_head=4,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.3,
    )


# family -> config for a vocabulary size, a width and a context: what distinguishes each family is kept
CONFIGS: dict[str, Callable[[int, int, int], PretrainedConfig]] = {
    "llama": lambda v, w, n: LlamaConfig(**_common(v, w, n)),
    "qwen2": lambda v, w, n: Qwen2Config(**_common(v, w, n)),  # bias on q, k, v
    "qwen3": lambda v, w, n: Qwen3Config(**_common(v, w, n), head_dim=w // 4),  # RMSNorm on q and k
    "mistral": lambda v, w, n: MistralConfig(**_common(v, w, n), sliding_window=n // 2),
    "gemma3_text": lambda v, w, n: Gemma3TextConfig(
        **(_common(v, w, n) | {"initializer_range": 0.02}),  # its embeddings are scaled by sqrt(width) already
        head_dim=w // 4,
        sliding_window=n // 2,
        query_pre_attn_scalar=w // 4,
    ),  # sliding/global layers, sandwich norms, scaled embeddings
    "phi3": lambda v, w, n: Phi3Config(**_common(v, w, n)),  # fused qkv and gate_up projections
    "gpt2": _gpt2,  # learned positions, LayerNorm, GELU, Conv1D
}
FAMILIES = tuple(CONFIGS)


def default_corpus(seed: int = 0) -> list[str]:
    """Text the tokenizer's merges are learned from: numbers, arithmetic and a few words, the stuff of the
    tasks. Byte-level BPE encodes any other text too (as more tokens)."""
    rng = random.Random(seed)
    words = [
        "the",
        "answer",
        "is",
        "so",
        "we",
        "have",
        "then",
        "add",
        "multiply",
        "total",
        "each",
        "step",
        "think",
        "first",
        "next",
    ]
    lines = []
    for _ in range(2000):
        a, b = rng.randint(0, 999), rng.randint(0, 99)
        op, value = rng.choice([("+", a + b), ("-", a - b), ("*", a * b)])
        lines.append(f"{a}{op}{b}={value} {' '.join(rng.sample(words, 4))}")
    return lines


def bpe_tokenizer(corpus: Iterable[str], vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``corpus``: ``<bos>`` prepended, ``<pad>``/``<eos>`` set, a chat
    template (``<|role|>\\n...<eos>``)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", chat_template=CHAT_TEMPLATE
    )


def tiny_model(family: str, vocab_size: int, width: int = 64, max_len: int = 256, seed: int = 0) -> PreTrainedModel:
    if family not in CONFIGS:
        raise ValueError(f"unknown model family {family!r}; families: {', '.join(FAMILIES)}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(CONFIGS[family](vocab_size, width, max_len))
    with torch.no_grad():  # norm weights away from their constant init, so that every layer shapes the output
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.5)
    return model


def write_tiny(family: str, out: str | Path, width: int = 64, max_len: int = 256, seed: int = 0) -> Path:
    """A tiny ``family`` model and its tokenizer as an HF checkpoint directory (what ``init_from`` takes)."""
    tokenizer = bpe_tokenizer(default_corpus(seed))
    model = tiny_model(family, len(tokenizer), width, max_len, seed)
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("family", choices=FAMILIES)
    parser.add_argument("out", type=Path)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_tiny(args.family, args.out, args.width, args.max_len, args.seed))


if __name__ == "__main__":
    main()
