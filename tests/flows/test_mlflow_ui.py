"""The MLflow UI driven as a person would: a real `mlflow server`, headless Chromium (Debian `chromium` +
`chromium-driver`, Selenium). The run comparison of two finished pipeline runs; a registered model's versions,
lineage tags and champion alias."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT, compose
from thinkflow.inference.vllm_server import free_port
from thinkflow.runner import end_pipeline_run, run_stage, start_pipeline_run

SCREENSHOTS = Path(os.environ.get("THINKFLOW_TEST_ARTIFACTS", ROOT / "mlruns" / "test-artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _pipeline_run(root: Path, seed: int) -> str:
    """A finished pipeline run (pretrain, rl); returns its pretrain stage run id."""
    config = compose([f"seed={seed}", f"run_name=seed-{seed}", "trainer.progress_bar=false"], root=root)
    config |= {"ttc": None, "compare": None}
    parent = start_pipeline_run(config, None)
    results = {"pretrain": run_stage("pretrain", config, parent, {}, None)}
    results["rl"] = run_stage("rl", config, parent, results, None)
    end_pipeline_run(config, parent, results, "FINISHED")
    return results["pretrain"].run_id


@contextmanager
def _mlflow_ui(store: str) -> Iterator[tuple[str, object]]:
    """A real `mlflow server` on ``store`` and a headless Chromium; yields (the UI's URL, the driver)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store]
        + ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
        options.add_argument(arg)
    driver = None
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.time() < deadline, server.stdout.read()[-3000:]
            time.sleep(1)
        driver = webdriver.Chrome(service=Service(DRIVER), options=options)
        yield f"http://127.0.0.1:{port}", driver
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(30)


def _read_until_seen(driver, wanted: list[str], shot: str) -> str:
    """Read the page, scrolling it (and its scrolling tables) on as a person reading down would, until every
    string in ``wanted`` has been on screen (tables only render the rows in view); screenshot and text saved."""
    from selenium.webdriver.support.ui import WebDriverWait

    seen: list[str] = []

    def scrolled_into_view(d) -> bool:
        seen.append(d.find_element("tag name", "body").text)
        d.execute_script(
            "for (const el of document.querySelectorAll('*')) {"
            "  if (el.scrollHeight > el.clientHeight + 10) el.scrollTop += 250; }"
            "window.scrollBy(0, 250);"
        )
        return all(any(w in text for text in seen) for w in wanted)

    try:
        WebDriverWait(driver, 120, poll_frequency=0.5).until(scrolled_into_view)
    finally:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOTS / f"{shot}.png"))
        (SCREENSHOTS / f"{shot}.txt").write_text("\n".join(seen))
    assert (SCREENSHOTS / f"{shot}.png").stat().st_size > 10_000
    return "\n".join(seen)


@pytest.mark.slow
@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian chromium and chromium-driver (apt-get install)")
def test_compare_view_shows_both_runs_stage_metrics(tmp_path):
    runs = [_pipeline_run(tmp_path, seed) for seed in (0, 1)]
    store = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("thinkflow").experiment_id
    metrics = ("train/loss", "val/loss", "pretrain/val_acc")  # the pretrain stage runs of two pipelines
    losses = [client.get_run(r).data.metrics["val/loss"] for r in runs]
    assert all(set(metrics) <= set(client.get_run(r).data.metrics) for r in runs) and losses[0] != losses[1]

    with _mlflow_ui(store) as (ui, driver):
        # the view a user reaches by ticking both runs in the runs table and pressing "Compare"
        driver.get(f"{ui}/#/compare-runs?runs={quote(json.dumps(runs))}&experiments={quote(json.dumps([exp]))}")
        # metric names in the Metrics table, both run ids
        body = _read_until_seen(driver, ["train/loss", "pretrain/val_acc", *runs], "mlflow_compare_runs")
    for loss in losses:  # each run's own val/loss, as the table rounds it (4 significant digits)
        assert f"{loss:.4g}" in body, (loss, body[-3000:])


@pytest.mark.slow
@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian chromium and chromium-driver (apt-get install)")
def test_registered_model_page_shows_versions_lineage_and_the_champion(tmp_path):
    """pretrain -> rl -> ttc -> gate with registration: the registered model's page lists both versions with the
    champion alias on the one the gate promoted; the version's page shows its lineage tags."""
    overrides = ["tracking.register_models=true", "gate=default", "rl.max_steps=2", "rl.eval_every=2"]
    overrides += ["rl.ckpt_every=2", "ttc.n_max=4", "ttc.ks=[1,2,4]", "ttc.budgets=[]", "ttc.search.widths=[]"]
    config = compose(overrides, root=tmp_path) | {"compare": None}
    parent = start_pipeline_run(config, None)
    results = {}
    for stage in ("pretrain", "rl", "ttc", "gate"):
        results[stage] = run_stage(stage, config, parent, dict(results), None)
    end_pipeline_run(config, parent, results, "FINISHED")
    name = results["rl"].details["registered"]["name"]
    store = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert str(MlflowClient(store).get_model_version_by_alias(name, "champion").version) == "2"

    with _mlflow_ui(store) as (ui, driver):
        driver.get(f"{ui}/#/models/{name}")  # Models -> the registered model: its versions and aliases
        body = _read_until_seen(driver, [name, "Version 1", "Version 2", "champion"], "mlflow_registered_model")
        # the alias sits in version 2's row (the versions table lists the newest first)
        assert re.search(
            r"Version 2\n.*?parent_version\n: " + re.escape(f"{name}/1") + r".*?@ champion.*?Version 1", body, re.S
        )
        driver.get(f"{ui}/#/models/{name}/versions/2")  # the champion version: its lineage tags
        wanted = ["champion", "parent_version", f"{name}/1", "stage", "config_hash", "gate.decision", "promoted"]
        page = _read_until_seen(driver, wanted, "mlflow_model_version")
        assert re.search(r"Aliases\n:\n@ champion", page) and re.search(
            r"parent_version\n" + re.escape(f"{name}/1"), page
        )
