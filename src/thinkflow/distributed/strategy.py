"""Lightning strategies from ``trainer`` config, including DeepSpeed ZeRO on CPU.

Lightning's ``DeepSpeedStrategy`` refuses anything but CUDA, although DeepSpeed itself runs
ZeRO-2/3 on CPU over gloo (its CPU accelerator). ``CPUDeepSpeedStrategy`` sets up the process
group the DDP way, skips the CUDA device-index check and places each rank on ``cpu``. It leans
on Lightning internals, so Lightning is pinned and the strategy is tested with 2 processes.
"""

from __future__ import annotations

import torch
from lightning_fabric.utilities.seed import reset_seed
from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy

from thinkflow.config import TrainerConfig


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    strategy_name = "deepspeed_cpu"

    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)  # the parent's CUDA-only check is the one thing skipped

    def setup_distributed(self) -> None:
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @property
    def root_device(self) -> torch.device:
        return torch.device("cpu", self.local_rank)  # DeepSpeed reads the rank from the index


def deepspeed_config(tc: TrainerConfig, grad_clip: float) -> dict:
    """The DeepSpeed JSON config for a ``trainer.deepspeed`` section."""
    ds = tc.deepspeed
    zero: dict = {"stage": ds.stage, "contiguous_gradients": True, "overlap_comm": False}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": tc.accelerator != "cpu"}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": tc.accelerator != "cpu"}
    config = {
        "zero_optimization": zero,
        "gradient_clipping": grad_clip,
        "train_micro_batch_size_per_gpu": 1,
        "zero_allow_untested_optimizer": True,  # the LightningModule's torch AdamW
        # offload with that torch optimizer instead of DeepSpeedCPUAdam (a JIT-compiled op)
        "zero_force_ds_cpu_optimizer": False,
    }
    if tc.precision.startswith("bf16"):
        config["bf16"] = {"enabled": True}
    elif tc.precision.startswith("16"):
        config["fp16"] = {"enabled": True}
    return config


def uses_cpu(tc: TrainerConfig) -> bool:
    return tc.accelerator == "cpu" or (tc.accelerator == "auto" and not torch.cuda.is_available())


def build_strategy(tc: TrainerConfig, grad_clip: float):
    """A Lightning strategy object (or name) for the trainer config."""
    if tc.strategy == "deepspeed":
        cls = CPUDeepSpeedStrategy if uses_cpu(tc) else DeepSpeedStrategy
        return cls(config=deepspeed_config(tc, grad_clip), process_group_backend="gloo" if uses_cpu(tc) else None)
    if tc.strategy == "ddp" or tc.world_size > 1:
        return DDPStrategy(process_group_backend="gloo" if uses_cpu(tc) else None)
    return "auto"
