"""The ``gate`` section's schema (``conf/gate/default.yaml`` holds every value)."""

from __future__ import annotations

from pydantic import Field

from thinkflow.config import _Strict


class GateConfig(_Strict):
    primary: str  # the metric that must improve: pass@1, pass@max or maj@max (max: ttc's n_max)
    guarded: list[str]  # metrics that must not drop beyond tolerance with confidence
    tolerance: float = Field(ge=0, le=1)
    level: float = Field(gt=0.5, lt=1)  # confidence of the paired bootstrap intervals
    resamples: int = Field(ge=100)
    alias: str = Field(min_length=1)  # the registry alias the winner holds
