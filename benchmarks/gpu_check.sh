#!/usr/bin/env bash
# GPU readiness: the CUDA paths no CPU session can run, in one short script (~10 min on one recent GPU).
#
#   bash benchmarks/gpu_check.sh            # from the repo root, in an environment with CUDA torch and thinkflow
#
# 1. DeepSpeed ZeRO-2 and ZeRO-3 (trainer=deepspeed_zero2 / _zero3 on every visible GPU): pretrain -> rl, tiny.
# 2. The vLLM GPU backend with its per-step weight refresh (rl.backend=vllm), when a vLLM venv is there
#    (THINKFLOW_VLLM_PYTHON, or `python -m thinkflow.inference.vllm_server create-venv --gpu`); else skipped, said so.
# 3. Gemma 3 270M RL steps in bf16 (experiment=gemma3_270m, the gemma extra), LoRA r=16 and full fine-tuning.
# Each run's figures come from its MLflow store; the "GPU check" section of docs/benchmarks.md gets them
# (python -m benchmarks.gpu_report ROOT). Until a run of this script is written there, the GPU paths are unverified.
set -uo pipefail
ROOT=${GPU_CHECK_ROOT:-$(mktemp -d /tmp/gpu_check.XXXX)}
GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -lt 1 ]; then echo "gpu_check: no CUDA device visible (torch.cuda.device_count() = 0)"; exit 2; fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$ROOT/gpus.txt"
TINY=(experiment=tiny "~compare" trainer.progress_bar=false)
status=0
run() {  # name, then overrides; a failure is recorded and the next check still runs
    local name=$1; shift
    echo "=== $name: $*"
    if timeout 900 python flows/pipeline.py "paths.root=$ROOT/$name" "run_name=$name" "$@" >"$ROOT/$name.log" 2>&1; then
        echo "ok" >"$ROOT/$name.status"
    else
        echo "failed (exit $?)" >"$ROOT/$name.status"; status=1; tail -20 "$ROOT/$name.log"
    fi
    cat "$ROOT/$name.status"
}
run zero2 "${TINY[@]}" trainer=deepspeed_zero2 "trainer.devices=$GPUS"
run zero3 "${TINY[@]}" trainer=deepspeed_zero3 "trainer.devices=$GPUS"
if python -c "from thinkflow.inference.vllm_server import vllm_python; vllm_python()" 2>/dev/null; then
    run vllm "${TINY[@]}" trainer=gpu rl.backend=vllm
else
    echo "skipped: no vLLM venv (python -m thinkflow.inference.vllm_server create-venv --gpu)" >"$ROOT/vllm.status"
fi
run gemma_lora experiment=gemma3_270m trainer=gpu trainer.precision=bf16-mixed rl.max_steps=6 "~compare"
run gemma_full experiment=gemma3_270m trainer=gpu trainer.precision=bf16-mixed rl.max_steps=6 "~compare" rl.lora=null
python -m benchmarks.gpu_report "$ROOT"
exit $status
