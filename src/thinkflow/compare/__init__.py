"""The ``compare`` stage: open-weights models, this project's checkpoints and frontier APIs on the
same benchmark and strategies, normalised by dollars and FLOPs."""

from thinkflow.compare.client import APIClient, APIError, Call, Endpoint, Limits, SpendCapReached
from thinkflow.compare.stage import run_compare

__all__ = ["APIClient", "APIError", "Call", "Endpoint", "Limits", "SpendCapReached", "run_compare"]
