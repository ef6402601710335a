"""Generation: one interface (prompts + SamplingParams -> Samples) over several backends.

``hf`` runs in-process (a lean Llama path with a preallocated KV cache, or any HF causal LM);
``vllm`` is a server in its own venv. ``budget`` adds s1-style thinking budgets on top of
either. KV-cache bytes per token are a property of the model (``thinkflow.models.kv``).
"""

from thinkflow.inference.factory import BACKENDS, open_engine
from thinkflow.inference.hf import HFEngine
from thinkflow.inference.types import Engine, GenerationError, Sample, SamplingParams

__all__ = ["BACKENDS", "Engine", "GenerationError", "HFEngine", "Sample", "SamplingParams", "open_engine"]
