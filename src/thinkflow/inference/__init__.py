"""Generation: one interface (prompts + SamplingParams -> Samples) over several backends."""

from thinkflow.inference.hf import HFEngine
from thinkflow.inference.types import GenerationError, Sample, SamplingParams

__all__ = ["GenerationError", "HFEngine", "Sample", "SamplingParams"]
