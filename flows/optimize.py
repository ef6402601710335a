"""Optuna search over RL hyperparameters, maximising held-out ``rl/val_pass@1``.

    python flows/optimize.py --trials 12                                   # the default search space
    python flows/optimize.py --trials 6 --param "rl.lr=log:1e-5:3e-4" --param "rl.group_size=choice:4,8" \\
        -- rl.max_steps=100                                                # base overrides for every trial

Each trial is one pipeline run (the Prefect flow, one MLflow parent run tagged ``sweep_id=<study>``
and ``optuna.trial=<n>``) with the trial's overrides on top of the base ones. Stages a trial does not
change are reused (``thinkflow.caching``): pretraining runs once for the whole study. The study lives
in ``<paths.root>/mlruns/optuna.db`` (SQLite: rerun with the same ``--study`` to add trials); at the end
the trials table and the best parameters are logged on a run named ``optuna <study>``.

Search-space syntax, one ``--param`` each: ``key=log:LOW:HIGH`` (log-uniform float),
``key=float:LOW:HIGH``, ``key=int:LOW:HIGH``, ``key=choice:A,B,...``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python flows/optimize.py` from anywhere

from flows.pipeline import pipeline  # noqa: E402
from thinkflow.composition import compose  # noqa: E402
from thinkflow.config import ConfigError, validate  # noqa: E402
from thinkflow.runner import open_tracker  # noqa: E402
from thinkflow.sweeps import SUMMARY_TAG, SWEEP_TAG  # noqa: E402

DEFAULT_SPACE = ["rl.lr=log:1e-5:3e-4", "rl.clip_high=float:0.2:0.4", "rl.group_size=choice:4,8"]


def parse_space(specs: list[str]) -> dict[str, tuple]:
    """``key=kind:args`` strings to {key: (kind, args)}; a malformed one is named in the error."""
    space = {}
    for spec in specs:
        key, sep, rest = spec.partition("=")
        kind, _, args = rest.partition(":")
        try:
            if not sep or not key:
                raise ValueError("expected key=kind:args")
            if kind in ("log", "float"):
                low, high = (float(x) for x in args.split(":"))
                if not low < high or (kind == "log" and low <= 0):
                    raise ValueError("need low < high (and low > 0 for log)")
                space[key] = (kind, (low, high))
            elif kind == "int":
                low, high = (int(x) for x in args.split(":"))
                if not low < high:
                    raise ValueError("need low < high")
                space[key] = (kind, (low, high))
            elif kind == "choice":
                choices = [c for c in args.split(",") if c]
                if len(choices) < 2:
                    raise ValueError("need at least two choices")
                space[key] = (kind, tuple(choices))
            else:
                raise ValueError(f"unknown kind {kind!r} (log, float, int, choice)")
        except ValueError as err:
            raise ConfigError(f"search space entry {spec!r}: {err}") from None
    return space


def suggest(trial, space: dict[str, tuple]) -> list[str]:
    out = []
    for key, (kind, args) in space.items():
        if kind == "log":
            value = trial.suggest_float(key, *args, log=True)
        elif kind == "float":
            value = trial.suggest_float(key, *args)
        elif kind == "int":
            value = trial.suggest_int(key, *args)
        else:
            value = trial.suggest_categorical(key, list(args))
        out.append(f"{key}={value}")
    return out


def optimize(trials: int, space: dict[str, tuple], base: list[str], study_name: str, seed: int = 0) -> dict:
    import optuna

    base_config = compose(base)
    cfg = validate(base_config)
    if cfg.rl is None:
        raise ConfigError("the Optuna search maximises rl/val_pass@1: the pipeline needs its rl stage")
    store = Path(cfg.paths.root).resolve() / "mlruns"
    store.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=study_name,
        storage=f"sqlite:///{store / 'optuna.db'}",
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        load_if_exists=True,
    )

    def objective(trial) -> float:
        overrides = suggest(trial, space)
        result = pipeline(
            compose([*base, *overrides]),
            {SWEEP_TAG: study_name, "optuna.trial": str(trial.number), "sweep.overrides": " ".join(overrides)},
        )
        trial.set_user_attr("parent_run_id", result["parent_run_id"])
        return float(result["rl"].metrics["val_pass@1"])

    study.optimize(objective, n_trials=trials)
    table = study.trials_dataframe(attrs=("number", "value", "params", "user_attrs", "state"))
    tracker = open_tracker(cfg)
    with tracker.run(f"optuna {study_name}", {SWEEP_TAG: study_name, SUMMARY_TAG: "true"}) as run_id:
        tracker.log_params(run_id, {f"best.{k}": str(v) for k, v in study.best_params.items()})
        tracker.log_metrics(run_id, {"optuna/best_val_pass_at_1": study.best_value})
        with tempfile.TemporaryDirectory() as tmp:
            table.to_csv(Path(tmp) / "trials.csv", index=False)
            tracker.log_artifacts(run_id, tmp, "optuna")
    print(
        f"optuna {study_name}: best rl/val_pass@1 {study.best_value:.4f} with {study.best_params} "
        f"after {len(study.trials)} trials (MLflow run {run_id})"
    )
    return {
        "best_value": study.best_value,
        "best_params": study.best_params,
        "run_id": run_id,
        "trials": len(study.trials),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--param", action="append", help="search-space entry; repeatable (default: lr, clip_high, G)")
    parser.add_argument("--study", default="thinkflow-rl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every trial")
    args = parser.parse_args()
    if args.trials < 1:
        parser.error("--trials must be >= 1")
    try:
        optimize(args.trials, parse_space(args.param or DEFAULT_SPACE), args.overrides, args.study, args.seed)
    except ConfigError as err:
        sys.exit(str(err))


if __name__ == "__main__":
    main()
