from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from tests.conftest import ROOT, compose
from thinkflow.config import ConfigError, validate


def _experiments() -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", _experiments())
def test_every_experiment_composes_and_validates(experiment, tmp_path):
    validate(compose([f"experiment={experiment}"], root=tmp_path))


@pytest.mark.parametrize("group", ["task", "model", "trainer"])
def test_every_group_option_validates(group, tmp_path):
    for option in sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml")):
        config = compose([f"{group}={option}"], root=tmp_path)
        if group == "task" and option == "math500":  # evaluation-only: the training stages refuse it
            config |= {"pretrain": None, "rl": None, "ttc": config["ttc"] | {"init_from": str(tmp_path)}}
        validate(config)


def test_default_config_validates_and_runs_pretrain(tmp_path):
    cfg = validate(compose(root=tmp_path, tiny=False))
    assert cfg.pretrain is not None and cfg.task.name == "multiplication"
    assert cfg.task.n_test >= 200  # the accuracy window is measured on >= 200 held-out problems


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.n_heads=3", "model: n_heads=3 must divide d_model=32"),
        ("model.n_kv_heads=3", "n_kv_heads=3 must divide n_heads=2"),
        ("pretrain.lr=-1", "pretrain.lr"),
        ("pretrain.max_steps=abc", "pretrain.max_steps"),
        ("pretrain.warmup_steps=500", "warmup_steps=500 must be < max_steps=20"),
        ("task.name=sudoku", "unknown task 'sudoku'"),
        ("trainer.precision=64", "trainer.precision"),
    ],
)
def test_bad_values_name_the_key(override, key, tmp_path):
    cfg = compose([override], root=tmp_path)
    with pytest.raises(ConfigError, match=key.replace("(", r"\(")):
        validate(cfg)


def test_unknown_key_is_rejected(tmp_path):
    cfg = compose(root=tmp_path)
    cfg["pretrain"]["max_stepz"] = 5
    with pytest.raises(ConfigError, match="pretrain.max_stepz: Extra inputs are not permitted"):
        validate(cfg)
    with pytest.raises(ConfigCompositionException, match="max_stepz"):
        compose(["pretrain.max_stepz=5"], root=tmp_path)  # Hydra refuses it first


def test_malformed_override_is_refused():
    from hydra.errors import OverrideParseException

    with pytest.raises(OverrideParseException):
        compose(["pretrain.max_steps=[1,"])


def test_paths_root_moves_every_generated_file(tmp_path):
    cfg = validate(compose(root=tmp_path))
    assert Path(cfg.paths.work_dir) == tmp_path / "mlruns" / "work"


def test_preflight_checks_the_task_data(tmp_path, gsm8k_dir):
    from thinkflow.config import preflight
    from thinkflow.tasks import TaskError

    assert preflight(compose(["task=gsm8k", f"task.source={gsm8k_dir}"], root=tmp_path)).task.name == "gsm8k"
    assert preflight(compose(["task=gsm8k", "task.source=openai/gsm8k"], root=tmp_path))  # hub id: left to datasets
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text('{"question": "q?", "answer": "#### 1"}\n')
    (data / "test.jsonl").write_text("")
    with pytest.raises(TaskError, match=f"{data / 'test.jsonl'}: empty split"):
        preflight(compose(["task=gsm8k", f"task.source={data}"], root=tmp_path))
