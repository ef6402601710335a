"""A learned outcome verifier: P(correct | prompt, completion) from the policy's own features.

Trained on sampled rollouts of *training* problems (never the held-out ones it then scores):
features are the completion's mean final hidden state from the checkpoint itself plus the
sample's log-probability statistics (mean, minimum token log-prob: one unlikely digit is the
typical slip), length and whether it has an answer; then an L2-regularised logistic regression.
"""

from __future__ import annotations

import numpy as np
import torch

from thinkflow.envs import sample_verdict, with_env
from thinkflow.inference import SamplingParams
from thinkflow.tasks import Problem, Task


@torch.no_grad()
def completion_features(model, tokenizer, prompts: list[str], completions: list[str], batch: int = 256) -> torch.Tensor:
    """(N, d) mean final-layer hidden state over each completion's tokens."""
    feats = []
    for i in range(0, len(prompts), batch):
        p_ids = tokenizer(prompts[i : i + batch]).input_ids
        c_ids = tokenizer(completions[i : i + batch], add_special_tokens=False).input_ids
        rows = [p + c for p, c in zip(p_ids, c_ids, strict=True)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        mask = torch.zeros(len(rows), width)
        for j, (p, r) in enumerate(zip(p_ids, rows, strict=True)):
            ids[j, : len(r)] = torch.tensor(r)
            mask[j, len(p) - 1 : len(r)] = 1  # the last prompt position onward: the completion's states
        attention = (ids != tokenizer.pad_token_id).long()
        # logits of the last position only: the batch's full logits would be B x T x vocab (16 GB for Gemma's 262k)
        out = model(input_ids=ids, attention_mask=attention, output_hidden_states=True, logits_to_keep=1)
        h = out.hidden_states[-1]  # (B, T, d)
        feats.append((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))
    return torch.cat(feats)


class LearnedVerifier:
    def __init__(self, model, tokenizer) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.weight: torch.Tensor | None = None
        self.mu: torch.Tensor | None = None  # feature standardisation, fitted on the training samples
        self.sd: torch.Tensor | None = None
        self.train_acc = float("nan")

    def fit(self, engine, task: Task, problems: list[Problem], samples: int, max_new_tokens: int, seed: int = 0):
        params = SamplingParams(n=samples, temperature=1.0, max_new_tokens=max_new_tokens, seed=seed)
        groups = with_env(engine, task, problems).generate([p.prompt for p in problems], params)
        flat = [(p, s) for p, g in zip(problems, groups, strict=True) for s in g]
        labels = torch.tensor([float(sample_verdict(task, p, s)[0]) for p, s in flat])
        stats = sample_stats(
            [sum(s.logprobs) / max(1, s.gen_tokens) for _, s in flat],
            [min(s.logprobs, default=0.0) for _, s in flat],
            [s.gen_tokens for _, s in flat],
            [task.extract_answer(s.text) is not None for _, s in flat],
        )
        feats = completion_features(self.model, self.tokenizer, [p.prompt for p, _ in flat], [s.text for _, s in flat])
        feats = torch.cat([feats, stats], dim=1)
        self.mu, self.sd = feats.mean(0), feats.std(0) + 1e-6
        x = self._design(feats)
        w = torch.zeros(x.shape[1], requires_grad=True)
        opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")
        pos = labels.mean().clamp(0.05, 0.95)
        sample_w = torch.where(labels > 0, 0.5 / pos, 0.5 / (1 - pos))  # balance the classes

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w, labels, reduction="none") * sample_w
            loss = loss.mean() + 1e-2 * (w[:-1] ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.weight = w.detach()
        self.train_acc = float(((x @ self.weight > 0).float() == labels).float().mean())
        return self

    def _design(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.cat([(feats - self.mu) / self.sd, torch.ones(len(feats), 1)], dim=1)

    def score(self, prompts: list[str], completions: list[str], stats: torch.Tensor) -> torch.Tensor:
        """(N,) P(correct) for each completion; ``stats`` from ``sample_stats``."""
        if self.weight is None:
            raise RuntimeError("LearnedVerifier.score before fit")
        feats = completion_features(self.model, self.tokenizer, prompts, completions)
        return torch.sigmoid(self._design(torch.cat([feats, stats], dim=1)) @ self.weight)


def sample_stats(logprob_mean, logprob_min, gen_tokens, has_answer) -> torch.Tensor:
    """(N, 4) per-sample scalar features."""
    cols = [np.asarray(list(c), dtype=np.float32) for c in (logprob_mean, logprob_min, gen_tokens, has_answer)]
    return torch.from_numpy(np.stack(cols, axis=1))
