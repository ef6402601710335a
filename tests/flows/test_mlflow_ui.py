"""The MLflow UI's run comparison, driven as a person would: a real `mlflow server` on a store with
two finished pipeline runs, headless Chromium (Debian `chromium` + `chromium-driver`, Selenium)."""

import json
import os
import shutil
import subprocess
import sys
import time
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


@pytest.mark.slow
@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian chromium and chromium-driver (apt-get install)")
def test_compare_view_shows_both_runs_stage_metrics(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    runs = [_pipeline_run(tmp_path, seed) for seed in (0, 1)]
    store = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("thinkflow").experiment_id
    metrics = ("train/loss", "val/loss", "pretrain/val_acc")  # the pretrain stage runs of two pipelines
    losses = [client.get_run(r).data.metrics["val/loss"] for r in runs]
    assert all(set(metrics) <= set(client.get_run(r).data.metrics) for r in runs) and losses[0] != losses[1]

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            store,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
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
        # the view a user reaches by ticking both runs in the runs table and pressing "Compare"
        url = (
            f"http://127.0.0.1:{port}/#/compare-runs?runs={quote(json.dumps(runs))}"
            f"&experiments={quote(json.dumps([exp]))}"
        )
        driver.get(url)
        wanted = ["train/loss", "pretrain/val_acc", *runs]  # metric names in the Metrics table, both run ids
        seen: list[str] = []

        def scrolled_into_view(d) -> bool:
            """Read the page, then scroll it (and its scrolling tables) on, as a person reading down would:
            the Metrics table only renders the rows in view."""
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
            driver.save_screenshot(str(SCREENSHOTS / "mlflow_compare_runs.png"))
            (SCREENSHOTS / "mlflow_compare_runs.txt").write_text("\n".join(seen))
        body = "\n".join(seen)
        for loss in losses:  # each run's own val/loss, as the table rounds it (4 significant digits)
            assert f"{loss:.4g}" in body, (loss, body[-3000:])
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(30)
    assert (SCREENSHOTS / "mlflow_compare_runs.png").stat().st_size > 10_000
