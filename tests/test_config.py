import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from tests.conftest import ROOT, compose
from thinkflow.config import ConfigError, pipeline_model, validate

CONF = ROOT / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("experiment", "hydra"))


def _experiments() -> list[str]:
    return sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _schema_defaults_used(cfg: BaseModel, where: str = "") -> Iterator[str]:
    """Fields that took the schema's default instead of a value from conf/ (the entries of
    compare.contestants, a dict of per-run declarations, are not walked)."""
    for name in type(cfg).model_fields:
        if name not in cfg.model_fields_set:
            yield where + name
        if isinstance(value := getattr(cfg, name), BaseModel):
            yield from _schema_defaults_used(value, f"{where}{name}.")


@pytest.mark.parametrize("experiment", _experiments())
def test_every_experiment_composes_and_validates(experiment, tmp_path):
    cfg = validate(compose([f"experiment={experiment}"], root=tmp_path))
    assert not list(_schema_defaults_used(cfg))


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_validates(group, tmp_path):
    for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
        config = compose([f"{group}={option}"], root=tmp_path)
        if group == "task" and option == "math500":  # evaluation-only: the training stages refuse it
            config |= {"pretrain": None, "rl": None, "ttc": config["ttc"] | {"init_from": str(tmp_path)}}
        if group == "gate":  # gates registered versions (experiment=tiny turns registration off)
            config["tracking"]["register_models"] = True
        assert not list(_schema_defaults_used(validate(config))), f"{group}={option}"


def test_default_config_validates_and_runs_pretrain(tmp_path):
    cfg = validate(compose(root=tmp_path, tiny=False))
    assert cfg.pretrain is not None and cfg.task.name == "multiplication"
    assert cfg.task.n_test >= 200  # the accuracy window is measured on >= 200 held-out problems


def test_default_config_takes_every_value_from_conf(tmp_path):
    """The CLI's config is all YAML: no field of the validated default composition fell back to a schema default."""
    cfg = validate(compose(root=tmp_path, tiny=False))
    assert list(_schema_defaults_used(cfg)) == []


def _model_of(annotation) -> type[BaseModel] | None:
    """The section model a field holds (``X`` or ``X | None``); None for values, lists and dicts of models."""
    for t in (annotation, *typing.get_args(annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _defaults_beside_yaml(model: type[BaseModel], data: dict, where: str) -> Iterator[str]:
    """Keys of ``data`` (YAML at ``model``'s place) whose schema field has a default: two sources that could disagree."""
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            yield f"{where}{key}: not a field of {model.__name__}"
            continue
        if not field.is_required():
            shown = "a section" if isinstance(value, dict) else repr(value)
            yield f"{where}{key}: set to {shown} here, and the schema has a default ({field.get_default()!r})"
        if (section := _model_of(field.annotation)) is not None and isinstance(value, dict):
            yield from _defaults_beside_yaml(section, value, f"{where}{key}.")


def _yaml_files() -> list[Path]:
    return sorted(p for p in CONF.rglob("*.yaml") if p.relative_to(CONF).parts[0] != "hydra")


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(CONF)))
def test_yaml_values_have_no_second_default_in_the_schema(path):
    """conf/ holds the values, config.py only types and bounds them: a key set in any YAML file has no schema
    default, so the CLI (YAML) and code that builds configs from the schema cannot run different settings."""
    text = path.read_text()
    data = {k: v for k, v in (yaml.safe_load(text) or {}).items() if k not in ("defaults", "hydra")}
    model, where = pipeline_model(), ""
    if path != CONF / "pipeline.yaml" and "# @package _global_" not in text:
        assert "# @package" not in text, f"{path}: a package this test does not map"
        for group in path.relative_to(CONF).parent.parts:  # a group option lands at <group>
            model, where = _model_of(model.model_fields[group].annotation), f"{where}{group}."
    problems = list(_defaults_beside_yaml(model, data, where))
    assert not problems, f"{path.relative_to(ROOT)}:\n  " + "\n  ".join(problems)


def test_the_yaml_check_names_a_schema_default():
    class Section(BaseModel):
        lr: float
        clip_high: float = 0.2

    class Root(BaseModel):
        rl: Section | None

    found = list(_defaults_beside_yaml(Root, {"rl": {"lr": 1.0, "clip_high": 0.28, "clip_hi": 0.3}}, ""))
    assert found == [
        "rl.clip_high: set to 0.28 here, and the schema has a default (0.2)",
        "rl.clip_hi: not a field of Section",
    ]


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
    with pytest.raises(ConfigError, match="max_stepz"):
        compose(["pretrain.max_stepz=5"], root=tmp_path)  # Hydra refuses it first (thinkflow.composition says which)


def test_malformed_override_is_refused():
    with pytest.raises(ConfigError, match=r"bad overrides \['experiment=tiny', 'pretrain.max_steps=\[1,'\]"):
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


def test_evaluating_beyond_the_held_out_problems_that_training_excludes_is_refused():
    with pytest.raises(ConfigError, match=r"ttc.n_problems=300 evaluates more held-out problems than task.n_test=256"):
        validate(compose(["ttc.n_problems=300"], tiny=False))
    with pytest.raises(ConfigError, match=r"compare.n_problems=300 .* raise task.n_test to 300"):
        validate(compose(["compare.n_problems=300"], tiny=False))
    validate(compose(["ttc.n_problems=300", "task.n_test=300"], tiny=False))  # the held-out set itself grows
    validate(compose(["~pretrain", "~rl", "~compare", "ttc.init_from=/ckpt", "ttc.n_problems=300"], tiny=False))
