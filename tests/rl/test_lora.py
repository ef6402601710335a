"""LoRA (peft) on the policy: adapters only train, the lean decode path samples exactly the adapted model, the KL
reference is the base model with the adapters off (no copy), the HF export is merged (and the adapters kept),
and bad target modules are refused naming the model's own layers."""

import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from tests.conftest import compose
from thinkflow.config import ConfigError, validate
from thinkflow.inference import HFEngine, SamplingParams
from thinkflow.models import load_checkpoint
from thinkflow.models.families import write_tiny
from thinkflow.models.lora import AdaptersOff, apply_lora, base_model, merged_copy, trainable_params
from thinkflow.runner import run_stage, start_pipeline_run
from thinkflow.training import set_gradient_checkpointing

LORA = "rl.lora={r:4,alpha:8,dropout:0.0,target_modules:[q_proj,v_proj,down_proj]}"
PROMPTS = ["12*34=", "7+5=", "999-1=", "think first"]


def _adapted(path: Path, seed: int = 0):
    """A tiny model with adapters whose B matrices are non-zero (fresh ones are the identity)."""
    model, tok = load_checkpoint(path)
    model = apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"], where="t")
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    return model.eval(), tok


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return write_tiny("llama", tmp_path_factory.mktemp("lora") / "llama")


def test_the_fast_path_samples_the_adapted_model_exactly(tiny_llama):
    model, tok = _adapted(tiny_llama)
    engine = HFEngine(model, tok)
    assert engine.fast  # the lean Llama path, adapters folded into its weights
    ours = engine.generate(PROMPTS, SamplingParams(max_new_tokens=10, ignore_eos=True))
    generic = HFEngine(model, tok, fast=False).generate(PROMPTS, SamplingParams(max_new_tokens=10, ignore_eos=True))
    base = HFEngine(load_checkpoint(tiny_llama)[0], tok).generate(
        PROMPTS, SamplingParams(max_new_tokens=10, ignore_eos=True)
    )
    ids = lambda out: [g[0].token_ids for g in out]  # noqa: E731
    assert ids(ours) == ids(generic)  # the PEFT model's own forward, adapters applied in it
    assert ids(ours) != ids(base)  # and the adapters matter


def test_adapters_off_is_the_base_model_and_the_merged_copy_is_the_adapted_one(tiny_llama):
    model, tok = _adapted(tiny_llama)
    base, _ = load_checkpoint(tiny_llama)
    ids = tok(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        off = AdaptersOff(model)(input_ids=ids.input_ids, attention_mask=ids.attention_mask).logits
        want = base(input_ids=ids.input_ids, attention_mask=ids.attention_mask).logits
        on = model(input_ids=ids.input_ids, attention_mask=ids.attention_mask).logits
        merged = merged_copy(model)(input_ids=ids.input_ids, attention_mask=ids.attention_mask).logits
    assert torch.allclose(off, want, atol=1e-5) and not torch.allclose(on, want, atol=1e-3)
    assert torch.allclose(merged, on, atol=1e-4)
    assert trainable_params(model) < 0.2 * sum(p.numel() for p in model.parameters())


def test_gradient_checkpointing_gives_the_adapters_the_same_gradients(tiny_llama):
    """trainer.gradient_checkpointing recomputes activations in the backward pass; with LoRA the inputs of the
    frozen layers need no gradient of their own (non-reentrant), and the adapters' gradients are unchanged."""
    ids = torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(0))
    grads = []
    for enabled in (False, True):
        model, _ = _adapted(tiny_llama)
        set_gradient_checkpointing(model, enabled)
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        assert base_model(model).is_gradient_checkpointing == enabled
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and all("lora_" in n for n in grads[0])
    for name, g in grads[0].items():
        assert g is not None and g.abs().sum() > 0 and torch.allclose(g, grads[1][name], atol=1e-6), name


def test_target_modules_the_model_lacks_are_named_with_its_layers(tiny_llama):
    model, _ = load_checkpoint(tiny_llama)
    layers = "'down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj'"
    want = (
        rf"rl.lora.target_modules: \['c_attn'\] are not layers of this llama model; its linear layers are \[{layers}\]"
    )
    with pytest.raises(ValueError, match=want):
        apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "c_attn"], where="rl.lora")


def test_lora_config_is_checked_before_any_compute(tmp_path):
    with pytest.raises(ConfigError, match="rl.lora.r"):
        validate(compose(["rl.lora={r:0,alpha:8,dropout:0.0,target_modules:all-linear}"], root=tmp_path))
    with pytest.raises(ConfigError, match="rl.lora trains adapters the hf backend samples through"):
        validate(compose([LORA, "rl.backend=vllm"], root=tmp_path))
    with pytest.raises(ConfigError, match="rl.lora with trainer.strategy=deepspeed is not supported"):
        validate(compose([LORA, "trainer=cpu_zero2"], root=tmp_path))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("pre")
    config = compose(["seed=1"], root=root)
    return run_stage("pretrain", config, start_pipeline_run(config, None), {}, None).checkpoint


def test_the_rl_stage_trains_adapters_with_the_base_as_kl_reference(pretrained, tmp_path):
    overrides = ["seed=1", "rl.reward.format_weight=1.0", "rl.prompts_per_step=8", "rl.beta=0.1", "rl.lr=1e-3"]
    config = compose([*overrides, LORA, f"rl.init_from={pretrained}"], root=tmp_path) | {"pretrain": None}
    result = run_stage("rl", config, start_pipeline_run(config, None), {}, None)
    assert result.metrics["steps"] == 4
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    run = client.get_run(result.run_id)
    assert int(run.data.params["model.n_trainable"]) < 0.2 * int(run.data.params["model.n_params"])
    kl = [m.value for m in client.get_metric_history(result.run_id, "rl/kl")]
    assert kl and kl[-1] > 0  # measured against the base weights, which the adapters moved away from
    # the export is a plain merged model (what ttc, compare and vLLM load), with the adapters beside it
    ckpt = Path(result.checkpoint)
    assert (ckpt / "adapter" / "adapter_config.json").exists()
    assert json.loads((ckpt / "config.json").read_text())["model_type"] == "llama"
    before, _ = load_checkpoint(pretrained)
    after, _ = load_checkpoint(ckpt)
    changed = {
        n for (n, a), b in zip(after.named_parameters(), before.parameters(), strict=True) if not torch.equal(a, b)
    }
    assert changed and all(any(t in n for t in ("q_proj", "v_proj", "down_proj")) for n in changed)
