"""The MLflow UI, in headless Chromium, opens the experiment on its model-training runs table with the
compared figures as columns, and a λr sweep's own view lists its points side by side by λr (issue 14:
MLflow 3 opened the experiment in the GenAI view with no metric column).

A real `mlflow ui` (the command `onegen ui` runs) on a loopback port, over a sqlite store laid out as a
sweep leaves it: the experiment from `tasks.adapters.tracking.ensure_experiment`, the sweep's run, under it one
training run per λr (params `loss.kind`, `loss.lambda_r`; the eval/… metrics the evaluate stage logs on
it), under each an evaluate run. Each page is read from the DOM and screenshotted (kept under
$ONEGEN_SCREENSHOTS when set)."""
from __future__ import annotations

import io
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.browser_cdp import CHROMIUM, Chromium
from tests.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")]

WIDTH, HEIGHT = 2200, 800  # wide enough for every compared column: the grid renders only those in view
SWEEP = "sweep-20261206-000000-abcd"
POINTS = {2.0: (0.47, 0.03), 0.0: (0.31, 0.02), 1.0: (0.51, 0.04)}  # λr -> (R@1 sub-query, F1), logged in this order
R1 = "eval/hotpotqa/distractor/onegen/recall_at_1_subquery"
F1 = "eval/hotpotqa/distractor/onegen/f1"


def _store(tmp_path: Path) -> tuple[str, str]:
    from tasks.adapters import tracking

    uri = tracking.tracking_uri(f"sqlite:///{tmp_path / 'mlruns.db'}")
    client = tracking.client_for(uri)
    exp_id = tracking.ensure_experiment(client, "onegen", (tmp_path / "art").as_uri())
    parent = client.create_run(exp_id, run_name=SWEEP, tags={"onegen.kind": "lambda-sweep", "onegen.sweep": SWEEP})
    for lam, (r1, f1) in POINTS.items():
        run = client.create_run(exp_id, run_name=f"point-lr{lam:g}", tags={
            "onegen.sweep": SWEEP, "onegen.lambda_r": str(lam), "mlflow.parentRunId": parent.info.run_id})
        rid = run.info.run_id
        client.log_param(rid, "loss.lambda_r", lam)
        client.log_param(rid, "loss.kind", "info_nce")
        client.log_metric(rid, "val/recall_at_1", r1 - 0.1)
        client.log_metric(rid, R1, r1)
        client.log_metric(rid, F1, f1)
        ev = client.create_run(exp_id, run_name="evaluate", tags={
            "onegen.stage": "evaluate", "onegen.sweep": SWEEP, "mlflow.parentRunId": rid})
        client.log_metric(ev.info.run_id, R1, r1)
        client.set_terminated(ev.info.run_id)
        client.set_terminated(rid)
    client.set_terminated(parent.info.run_id)
    tracking.sweep_view(client, exp_id, SWEEP)
    return uri, exp_id


def _shot(browser: Chromium, name: str, tmp_path: Path) -> None:
    from PIL import Image

    png = browser.png()
    shots = Path(os.environ.get("ONEGEN_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    (shots / name).write_bytes(png)
    img = Image.open(io.BytesIO(png)).convert("RGB")
    assert img.size == (WIDTH, HEIGHT)
    assert len(img.getcolors(img.width * img.height) or range(300)) > 8, "a blank page"


def _open(browser: Chromium, url: str, expect: str) -> str:
    browser.call("Page.navigate", url=url)
    browser.until(lambda: browser.js(f"!!document.body && document.body.innerText.includes({expect!r})"),
                  f"{expect!r} on {url}", bound_s=90)
    time.sleep(1.0)  # the column headers and cells render a moment after the count
    return browser.js("document.body.innerText")


def test_the_experiment_and_a_sweep_open_on_runs_tables_with_the_compared_figures(tmp_path):
    pytest.importorskip("websockets")
    pytest.importorskip("PIL")
    from flows.serve import mlflow_ui_command, server_env
    from tasks.adapters import tracking

    uri, exp_id = _store(tmp_path)
    port = free_port()
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
        browser.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1,
                     mobile=False)

        # the experiment: model-training view (not GenAI's traces), compared columns by name
        text = _open(browser, tracking.runs_view_url(base, exp_id), "matching runs")
        _shot(browser, "mlflow-experiment.png", tmp_path)
        for column in (R1, F1, "val/recall_at_1", "loss.lambda_r"):
            assert column in text, f"column {column} not on the experiment's runs table"

        # the sweep's view: its three points, flat (not folded under the sweep's run), ordered by λr,
        # each with its R@1 and F1; neither the sweep's run nor the evaluate runs
        text = _open(browser, tracking.runs_view_url(base, exp_id, SWEEP), "point-lr")
        browser.until(lambda: "3 matching runs" in browser.js("document.body.innerText"), "3 matching runs")
        text = browser.js("document.body.innerText")
        _shot(browser, "mlflow-sweep.png", tmp_path)
        names = [f"point-lr{lam:g}" for lam in sorted(POINTS)]
        assert all(n in text for n in names), text
        # the grid's DOM order is not its visual order (rows are placed absolutely): compare where they are
        tops = browser.js("(() => { const top = n => { const a = [...document.querySelectorAll('a')].find("
                          "x => x.textContent.trim() === n); return a ? a.getBoundingClientRect().top : null; }; "
                          f"return {names!r}.map(top); }})()")
        assert None not in tops and tops == sorted(tops) and len(set(tops)) == 3, f"rows not ordered by λr: {tops}"
        assert "evaluate" not in text.split("Run Name", 1)[1]
        for r1, f1 in POINTS.values():
            assert str(r1) in text and str(f1) in text
        for column in (R1, F1, "loss.lambda_r"):
            assert column in text, f"column {column} not on the sweep's runs table"
        assert not browser.errors, browser.errors
    finally:
        if browser is not None:
            browser.close()
        ui.terminate()
        try:
            ui.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, 9)
            ui.wait(10)
