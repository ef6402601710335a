"""The ``compare`` stage: open-weights models, this project's checkpoints and frontier APIs on the
same benchmark and strategies, normalised by dollars and FLOPs."""

from thinkflow.compare.stage import run_compare

__all__ = ["run_compare"]
