"""A Lightning logger that writes to a given MLflow run through thinkflow's Tracker.

Lightning's own ``MLFlowLogger`` calls ``mlflow.set_tracking_uri``, which also sets the
process-wide ``MLFLOW_TRACKING_URI``: the next pipeline run in the same process (a Hydra
sweep, a test) would then silently log into the previous run's store. This one only
touches the run it was given. Lightning calls it on rank 0 only.
"""

from __future__ import annotations

from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.utilities import rank_zero_only

from thinkflow.tracking.mlflow_store import Tracker


class TrackerLogger(Logger):
    def __init__(self, tracker: Tracker, run_id: str) -> None:
        super().__init__()
        self.tracker, self.run_id = tracker, run_id

    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> str:
        return self.run_id

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.tracker.log_metrics(self.run_id, {k: v for k, v in metrics.items() if k != "epoch"}, step=step)

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        """Stages log their config section as params themselves (once, immutably)."""
