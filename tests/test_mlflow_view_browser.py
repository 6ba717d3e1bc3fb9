"""The MLflow UI, in headless Chromium, opens a λr sweep's experiment on its runs table with the compared
figures as columns (issue 14: MLflow 3 opened it in the GenAI view with no metric column).

A real `mlflow ui` (the command `onegen ui` runs) on a loopback port over a sqlite store that
`tasks.tracking.ensure_experiment` created, three runs logged as the sweep's training runs are (params
`loss.lambda_r`, the eval/… metrics); the page at `tracking.runs_view_url` is read from the DOM and
screenshotted (kept under $ONEGEN_SCREENSHOTS when set)."""
from __future__ import annotations

import io
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.browser_cdp import CHROMIUM, Chromium

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")]

RUNS = {0.0: (0.31, 0.02), 1.0: (0.51, 0.04), 2.0: (0.47, 0.03)}  # λr -> (R@1 sub-query, F1)
WIDTH, HEIGHT = 2200, 800
R1 = "eval/hotpotqa/distractor/onegen/recall_at_1_subquery"
F1 = "eval/hotpotqa/distractor/onegen/f1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _store(tmp_path: Path) -> tuple[str, str]:
    from tasks import tracking

    uri = tracking.tracking_uri(f"sqlite:///{tmp_path / 'mlruns.db'}")
    client = tracking.client_for(uri)
    exp_id = tracking.ensure_experiment(client, "onegen", (tmp_path / "art").as_uri())
    for lam, (r1, f1) in RUNS.items():
        run = client.create_run(exp_id, run_name=f"onegen-lr{lam:g}", tags={"onegen.sweep": "s"})
        client.log_param(run.info.run_id, "loss.lambda_r", lam)
        client.log_param(run.info.run_id, "loss.kind", "info_nce")
        client.log_metric(run.info.run_id, "val/recall_at_1", r1 - 0.1)
        client.log_metric(run.info.run_id, R1, r1)
        client.log_metric(run.info.run_id, F1, f1)
        client.set_terminated(run.info.run_id)
    return uri, exp_id


def test_sweep_runs_open_in_the_training_view_with_the_compared_metrics_as_columns(tmp_path):
    pytest.importorskip("websockets")
    pytest.importorskip("PIL")
    from flows.serve import mlflow_ui_command, server_env
    from tasks import tracking

    uri, exp_id = _store(tmp_path)
    port = _free_port()
    ui = subprocess.Popen(mlflow_ui_command(uri, "127.0.0.1", port), env=server_env(), cwd=tmp_path,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    (tmp_path / "profile").mkdir()
    browser = None
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120  # bounds a hang only
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=5)
                break
            except OSError:
                assert ui.poll() is None, f"mlflow ui exited ({ui.returncode})"
                assert time.monotonic() < deadline, "mlflow ui did not answer /health"
                time.sleep(0.5)
        browser = Chromium(tmp_path / "profile")
        # wide enough for every compared column: the grid renders only the columns in view
        browser.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)
        browser.call("Page.navigate", url=tracking.runs_view_url(base, exp_id))
        # the runs table has rendered when each run's name is on the page
        names = [f"onegen-lr{lam:g}" for lam in RUNS]
        probe = " && ".join(f"document.body.innerText.includes({n!r})" for n in names)
        browser.until(lambda: browser.js(f"!!document.body && {probe}"), "the runs table", bound_s=90)
        time.sleep(1.0)  # the column headers render with the rows' cells
        # the screenshot first, so that a failing check leaves it to look at
        from PIL import Image

        png = browser.png()
        shots = Path(os.environ.get("ONEGEN_SCREENSHOTS", tmp_path))
        shots.mkdir(parents=True, exist_ok=True)
        (shots / "mlflow-runs-view.png").write_bytes(png)
        img = Image.open(io.BytesIO(png)).convert("RGB")
        assert img.size[0] >= 1000 and len(img.getcolors(img.width * img.height) or range(300)) > 8  # not blank
        text = browser.js("document.body.innerText")
        # the model-training view's columns: the compared metrics and λr, by name
        for column in (R1, F1, "loss.lambda_r"):
            assert column in text, f"column {column} not on the page"
        # their values, as the table prints them
        for r1, f1 in RUNS.values():
            assert str(r1) in text and str(f1) in text
    finally:
        if browser is not None:
            browser.close()
        ui.terminate()
        try:
            ui.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, 9)
            ui.wait(10)
