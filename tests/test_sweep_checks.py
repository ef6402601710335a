"""Every job of a ``-m`` sweep is validated before the first one starts (``thinkflow.sweeps.check_jobs``)."""

import json

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import open_dict

from tests.conftest import ROOT
from thinkflow.sweeps import check_jobs, sweep_jobs


def _check(tmp_path, sweep: list[str], experiment: str = "tiny") -> list[list[str]]:
    """check_jobs on the master config Hydra's multirun would pass for ``-m experiment=... *sweep``."""
    fixed = [f"experiment={experiment}", f"paths.root={tmp_path}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("pipeline", overrides=fixed, return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.overrides.task = fixed + sweep
        check_jobs(cfg)
        return sweep_jobs(cfg)


def test_a_good_sweep_passes_with_each_job_in_hydra_order(tmp_path):
    jobs = _check(tmp_path, ["model.n_heads=2,4", "task=addition,gsm8k"])
    assert [job[2:] for job in jobs] == [
        ["model.n_heads=2", "task=addition"],
        ["model.n_heads=2", "task=gsm8k"],
        ["model.n_heads=4", "task=addition"],
        ["model.n_heads=4", "task=gsm8k"],
    ]
    assert len(_check(tmp_path, [], experiment="attention_variants")) == 3  # hydra.sweeper.params: model=mha,gqa,mqa


def test_a_bad_value_in_a_later_job_stops_the_sweep_naming_it(tmp_path):
    with pytest.raises(
        SystemExit, match=r"sweep job 1 \(.*pretrain.max_steps=abc\): invalid config:\n  pretrain.max_steps"
    ):
        _check(tmp_path, ["pretrain.max_steps=10,abc"])


def test_bad_data_in_a_job_stops_the_sweep_naming_the_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text(json.dumps({"question": "q?", "answer": "#### 1"}) + "\n")
    (data / "test.jsonl").write_text('{"question": "q?"}\n')
    with pytest.raises(SystemExit, match=f"sweep job 1 .*{data / 'test.jsonl'}, line 1: missing field 'answer'"):
        _check(tmp_path, ["task=addition,gsm8k", f"task.source={data}"])
