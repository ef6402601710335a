"""A stage is declared in one place (``thinkflow.registry.StageSpec``): a stage registered from outside the package
gets its config section, runs in the flow in its MLflow child run, is cached and reused, and takes part in
``cache.refresh``; the former name of a renamed stage still works, with a deprecation message."""

from pathlib import Path

import pytest
from mlflow import MlflowClient
from pydantic import BaseModel, ConfigDict, Field

from tests.conftest import compose
from thinkflow import registry
from thinkflow.caching import REUSED_TAG
from thinkflow.config import ConfigError, validate
from thinkflow.registry import StageResult, StageSpec, register, stage_names, unregister
from thinkflow.stages import stage_work_dir

CALLS: list[int] = []


class CountConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    value: int = Field(ge=0)


def run_count(cfg, ctx) -> StageResult:
    """Writes a table of ``count.value`` rows (keyed by its config) and reports how many it wrote."""
    CALLS.append(cfg.count.value)
    work = stage_work_dir(cfg, "count", {"count": cfg.count.model_dump(), "seed": cfg.seed})
    table = work / "rows.csv"
    table.write_text("i\n" + "".join(f"{i}\n" for i in range(cfg.count.value)))
    ctx.tracker.log_params(ctx.run_id, {"count.value": str(cfg.count.value)})
    return StageResult(stage="count", run_id=ctx.run_id, table=str(table), metrics={"rows": cfg.count.value})


def _no_nines(cfg) -> None:
    if cfg.count.value == 9:
        raise ValueError("count.value=9 is not allowed with this task")


@pytest.fixture
def count_stage():
    spec = register(
        StageSpec(
            name="count",
            run=run_count,
            config=CountConfig,
            order=50,
            inputs=("seed",),
            headline=("rows",),
            check=_no_nines,
        )
    )
    CALLS.clear()
    yield spec
    unregister("count")


def _config(root: Path, value: int, *extra: str) -> dict:
    config = compose(["~pretrain", "~rl", "~ttc", "~compare", *extra], root=root)
    return config | {"count": {"value": value}}


def test_a_registered_stage_is_validated_run_cached_and_reused(tmp_path, prefect_server, count_stage):
    from flows.pipeline import pipeline

    assert stage_names()[-1] == "count"
    with pytest.raises(ConfigError, match=r"count.value"):  # its section is typed and bounded ...
        validate(_config(tmp_path, -1))
    with pytest.raises(ConfigError, match="count.value=9 is not allowed"):  # ... and its own check runs
        validate(_config(tmp_path, 9))

    first = pipeline(_config(tmp_path, 3))
    assert (
        CALLS == [3]
        and first["count"].metrics == {"rows": 3}
        and Path(first["count"].table).read_text().count("\n") == 4
    )
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    child = client.get_run(first["count"].run_id)
    assert child.data.tags["stage"] == "count" and child.data.params["count.value"] == "3"
    parent = client.get_run(first["parent_run_id"])
    assert parent.data.metrics["count/rows"] == 3  # the headline on the parent run
    assert parent.data.tags["pipeline.stages"] == "count"

    again = pipeline(_config(tmp_path, 3))  # unchanged: reused, recorded as such
    assert CALLS == [3] and again["count"].run_id == first["count"].run_id
    reuse = [
        r
        for r in client.search_runs([child.info.experiment_id], f"tags.mlflow.parentRunId = '{again['parent_run_id']}'")
    ]
    assert len(reuse) == 1 and reuse[0].data.tags[REUSED_TAG] == first["count"].run_id
    assert reuse[0].data.params["count.value"] == "3"  # the reused run's params, for MLflow's Compare view

    pipeline(_config(tmp_path, 4))  # its section changed: computed
    pipeline(_config(tmp_path, 4, "cache.refresh=[count]"))  # asked to recompute
    assert CALLS == [3, 4, 4]


def test_the_former_stage_name_is_accepted_with_a_deprecation_message(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(registry, "_WARNED", set())  # once per process: this test sees it
    cfg = validate(compose(["cache.refresh=[ttc_eval,rl]"], root=tmp_path))
    assert cfg.cache.refresh == ["ttc", "rl"]
    said = capsys.readouterr().out
    assert "WARNING: stage 'ttc_eval' is now called 'ttc'; the old name still works" in said
    with pytest.raises(
        ConfigError, match=r"cache.refresh: unknown stage\(s\) \['sft_x'\]; the stages are pretrain, sft, rl"
    ):
        validate(compose(["cache.refresh=[sft_x]"], root=tmp_path))


def test_a_stage_reading_a_later_stage_is_refused(count_stage):
    register(StageSpec(name="early", run=run_count, config=CountConfig, order=5, upstream=("count",)))
    try:
        with pytest.raises(ValueError, match="stage 'early' reads \\['count'\\] upstream"):
            stage_names()
    finally:
        unregister("early")
