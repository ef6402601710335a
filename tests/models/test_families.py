"""Every common open-model family as the policy: tiny random models of Llama, Qwen2 (q/k/v bias), Qwen3 (q/k norm),
Mistral (sliding window), Gemma 3 (sliding/global layers, scaled embeddings), Phi-3 (fused projections) and GPT-2
(learned positions, Conv1D), each with a byte-level BPE tokenizer trained here. The engine's greedy output is
token for token that of ``transformers.generate`` (the Llama fast path and the generic path alike), its
log-probs are those of a forward pass, and each family runs rl -> ttc -> compare."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mlflow import MlflowClient

from tests.conftest import compose
from thinkflow.inference import HFEngine, SamplingParams
from thinkflow.models import load_checkpoint
from thinkflow.models.families import FAMILIES, write_tiny
from thinkflow.models.flops import FlopModel
from thinkflow.rl.rollout import build_batch, token_logprobs
from thinkflow.runner import run_stage, start_pipeline_run
from thinkflow.tracking import resolve_uri
from thinkflow.training import disable_dropout

PROMPTS = ["12*34=", "7+5= the answer", "999-1=", "think first"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("families")
    return {family: write_tiny(family, root / family) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_is_transformers_generate_token_for_token(family, checkpoints):
    model, tok = load_checkpoint(checkpoints[family])
    assert model.config.model_type == family and len(tok) > 256  # its own BPE vocabulary, not characters
    engine = HFEngine(model, tok)
    assert engine.fast == (family == "llama")  # the lean path only where it is exact
    ours = engine.generate(PROMPTS, SamplingParams(max_new_tokens=12, ignore_eos=True))
    enc = tok(PROMPTS, padding=True, padding_side="left", return_tensors="pt")
    ref = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=None)
    expected = [row[enc.input_ids.shape[1] :].tolist() for row in ref]
    assert [group[0].token_ids for group in ours] == expected
    assert len({t for ids in expected for t in ids}) > 8  # a varied output, not one token repeated


@pytest.mark.parametrize("family", FAMILIES)
def test_sampled_logprobs_are_a_forward_pass(family, checkpoints):
    model, tok = load_checkpoint(checkpoints[family])
    out = HFEngine(model, tok).generate(PROMPTS[:2], SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=3))
    for i, group in enumerate(out):
        prompt = tok(PROMPTS[i]).input_ids
        for s in group:
            ids = torch.tensor([prompt + s.token_ids])
            with torch.no_grad():
                logp = F.log_softmax(model(ids).logits[0, len(prompt) - 1 : -1].float(), -1)
            want = logp.gather(-1, torch.tensor(s.token_ids)[:, None]).squeeze(-1)
            assert torch.allclose(torch.tensor(s.logprobs), want, atol=1e-4), family


@pytest.mark.parametrize("family", FAMILIES)
def test_the_learner_loss_reaches_every_weight(family, checkpoints):
    """The RL learner's log-probs on a rollout batch of this family's tokens are a forward pass's, and a
    policy-gradient step moves every weight matrix (nothing detached, no family-specific path)."""
    model, tok = load_checkpoint(checkpoints[family])
    samples = HFEngine(model, tok).generate(PROMPTS, SamplingParams(n=2, temperature=1.0, max_new_tokens=6, seed=1))
    flat = [s for group in samples for s in group]
    batch = build_batch(tok, PROMPTS, flat)
    disable_dropout(model)  # as the rl stage does (GPT-2 ships 0.1 dropout: log-probs would be noise)
    model.train()
    logp = token_logprobs(model, batch)
    assert torch.allclose((logp * batch.loss_mask).sum(1), torch.tensor([sum(s.logprobs) for s in flat]), atol=1e-3)
    advantages = torch.linspace(-1, 1, len(flat))[:, None]  # some rows pushed up, others down
    (-(logp * batch.loss_mask * advantages).sum()).backward()
    still = [n for n, p in model.named_parameters() if p.ndim == 2 and (p.grad is None or not p.grad.abs().sum())]
    assert still == [], f"{family}: no gradient reaches {still}"


@pytest.mark.parametrize("family", FAMILIES)
def test_the_flop_model_counts_this_familys_matmul_weights(family, checkpoints):
    """The compute ledger's analytic FLOPs per token (2 x matmul weights) match the weights this model multiplies
    by: every 2-D weight except the embedding tables, plus the LM head (GPT-2: no KV heads, a two-matrix MLP)."""
    model, _ = load_checkpoint(checkpoints[family])
    tables = {model.get_input_embeddings().weight.data_ptr()} | {
        m.weight.data_ptr() for m in model.modules() if isinstance(m, torch.nn.Embedding)
    }
    matmul = sum(p.numel() for p in model.parameters() if p.ndim == 2 and p.data_ptr() not in tables)
    head = model.get_output_embeddings().weight.numel()  # tied to the input table: counted once, as a matmul here
    assert FlopModel.from_config(model.config).matmul_params == matmul + head


def test_the_chat_template_renders_a_conversation(checkpoints):
    _, tok = load_checkpoint(checkpoints["qwen3"])
    text = tok.apply_chat_template([{"role": "user", "content": "2+2="}], tokenize=False, add_generation_prompt=True)
    assert text == "<|user|>\n2+2=<eos>\n<|assistant|>\n"


def test_an_unknown_family_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown model family 'bert'; families: llama, qwen2"):
        write_tiny("bert", "/nonexistent")


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_runs_rl_then_ttc_then_compare(family, checkpoints, tmp_path):
    """The stages with a non-Llama policy and a BPE tokenizer: RL samples, scores, steps and exports it (a random
    model earns no reward, so its update is the learner test's job), ttc and compare score it. Qwen3 runs with
    task.prompt=chat: every rollout's prompt is its chat template's."""
    chat = family == "qwen3"
    config = compose(
        [
            *(["task.prompt=chat"] if chat else []),
            "~pretrain",
            f"rl.init_from={checkpoints[family]}",
            "rl.max_steps=2",
            "rl.eval_every=2",
            "rl.max_new_tokens=8",
            "ttc.checkpoints=[rl]",
            "ttc.n_max=4",
            "ttc.ks=[1,2,4]",
            "ttc.n_problems=8",
            "compare.n_problems=8",
            "compare.ks=[1,2]",
            "~compare.contestants.pretrain",
        ],
        root=tmp_path,
    )
    parent = start_pipeline_run(config, None)
    rl = run_stage("rl", config, parent, {}, None)
    assert rl.metrics["steps"] == 2 and rl.metrics["n_val"] > 0
    client = MlflowClient(resolve_uri(config["tracking"]["uri"], tmp_path))
    rows = json.loads(Path(client.download_artifacts(rl.run_id, "samples/rollouts.json", str(tmp_path))).read_text())
    prompts = [row[rows["columns"].index("prompt")] for row in rows["data"]]
    assert prompts and all(p.endswith("<eos>\n<|assistant|>\n") == chat for p in prompts)
    after, tok = load_checkpoint(rl.checkpoint)
    assert after.config.model_type == family and len(tok) > 256
    ttc = run_stage("ttc", config, parent, {"rl": rl}, None)
    assert 0 <= ttc.metrics["pass_at_1"] <= 1 and ttc.table
    compare = run_stage("compare", config, parent, {"rl": rl}, None)
    assert compare.details["contestants"]["rl"]["status"] == "ok"
