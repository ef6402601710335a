"""Third-party output that tells a thinkflow user nothing, silenced at its source; real warnings stay.

- Lightning's tip to install ``litlogger`` (printed by every ``Trainer``);
- Lightning's use of a deprecated torch pytree API (``isinstance(treespec, LeafSpec)``: Lightning's to fix);
- transformers' per-file "Writing model shards" / "Loading weights" bars (a checkpoint of this size is one
  shard and loads in milliseconds; hub downloads keep huggingface_hub's own bars);
- DeepSpeed's "Setting accelerator to CPU" warning on machines without a GPU (the same choice, made explicit
  through ``DS_ACCELERATOR=cpu``; a user's own setting wins).

Each is a filter on one message or one switch, so anything else those libraries say still shows.
"""

from __future__ import annotations

import logging
import os
import warnings

_LIGHTNING_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero")


class _DropMessages(logging.Filter):
    def __init__(self, *needles: str) -> None:
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in self.needles)


def silence() -> None:
    """Install the filters (idempotent); call before the libraries are used."""
    for name in _LIGHTNING_LOGGERS:
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in log.filters):
            log.addFilter(_DropMessages("litlogger"))
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    if "DS_ACCELERATOR" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            os.environ["DS_ACCELERATOR"] = "cpu"
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
