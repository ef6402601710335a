"""LoRA adapters (``peft``) on any HF causal LM, and what the rest of thinkflow needs from an adapted model:

- ``apply_lora``: adapters on the named linear layers (a clear error listing the model's own layers when a
  target does not exist); only the adapters train.
- ``AdaptersOff``: the base model's forward with the adapters disabled: the KL reference without a second copy
  of the weights.
- ``effective_weight``: a layer's weight with its active adapters folded in, computed (never merged in place),
  so the lean decode path samples exactly the adapted policy.
- ``merged_copy``: a plain HF model with the adapters merged, for the HF export later stages load.
"""

from __future__ import annotations

import copy

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers.pytorch_utils import Conv1D

ALL_LINEAR = "all-linear"


def linear_names(model: torch.nn.Module) -> list[str]:
    """The leaf names of the model's linear layers (what ``target_modules`` names), the LM head excepted."""
    names = {
        name.rsplit(".", 1)[-1]
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear | Conv1D) and not name.endswith("lm_head")
    }
    return sorted(names)


def apply_lora(
    model: torch.nn.Module, *, r: int, alpha: float, dropout: float, target_modules: list[str] | str, where: str
) -> PeftModel:
    """``model`` with LoRA adapters of rank ``r`` on ``target_modules`` (or every linear layer: ``all-linear``);
    the base weights are frozen. ``where`` names the config key in errors."""
    have = linear_names(model)
    if target_modules != ALL_LINEAR:
        missing = [t for t in target_modules if t not in have]
        if missing:
            raise ValueError(
                f"{where}.target_modules: {missing} are not layers of this {model.config.model_type} model; its "
                f"linear layers are {have} (or use all-linear)"
            )
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type="CAUSAL_LM"
    )
    return get_peft_model(model, config)


def is_lora(model: torch.nn.Module) -> bool:
    return isinstance(model, PeftModel)


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under the adapters (its layers carry them), or ``model`` itself."""
    return model.get_base_model() if is_lora(model) else model


def effective_weight(layer: torch.nn.Module) -> torch.Tensor:
    """``layer``'s weight as its forward applies it: base weight plus the active adapters' deltas (unless they
    are merged into it already, or disabled)."""
    if not hasattr(layer, "base_layer") or not hasattr(layer, "get_delta_weight"):
        return layer.weight
    weight = layer.base_layer.weight
    if getattr(layer, "merged", False) or getattr(layer, "disable_adapters", False):
        return weight
    for name in layer.active_adapters:
        if name in layer.lora_A:
            weight = weight + layer.get_delta_weight(name)
    return weight


class AdaptersOff:
    """Calls the adapted model with its adapters disabled: the frozen base policy (a KL reference) sharing the
    same weight tensors. A plain object, so Lightning does not count its parameters twice."""

    def __init__(self, model: PeftModel) -> None:
        self.model = model

    @property
    def config(self):
        return self.model.config

    def __call__(self, **inputs):
        with self.model.disable_adapter():
            return self.model(**inputs)


def merged_copy(model: PeftModel) -> torch.nn.Module:
    """A plain transformers model with the adapters merged into its weights (``model`` itself is untouched)."""
    return copy.deepcopy(model).merge_and_unload()


def trainable_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
