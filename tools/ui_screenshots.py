"""Screenshots of what MLflow's UI shows for an l2d run: its page, its accuracy-coverage plot
among its artifacts, the runs table and the chart view, taken with headless Chromium.

    python tools/ui_screenshots.py --backend-store-uri sqlite:///$PWD/mlflow.db --output shots

Needs Debian's ``chromium`` package (``apt-get install chromium``); it is not part of CI. Starts
``mlflow ui`` on a free loopback port, waits for ``/health``, takes the screenshots of the run
given (by default the newest run of the store) and stops the server. The chart view draws its
charts only after tens of seconds of scripts, so it gets a longer render budget, and the tool
checks that the page it captured holds charts (plotly's SVG plots), not loading spinners: it
exits with an error otherwise.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow import MlflowClient

# MLflow 3.17 opens experiments in its GenAI view unless the address asks for model training.
TRAINING_VIEW = "workflowType=machine_learning"
# Milliseconds (of Chromium's virtual time) the page's scripts run before the screenshot: the
# chart view showed spinners after 15 s and its charts after 60 s (MLflow 3.17, 2 runs).
RENDER_BUDGET_MS = 15000
CHART_BUDGET_MS = 60000
CHART_VIEW = "chart_view.png"
# What each chart of the chart view is drawn in, once drawn (plotly).
CHART_MARK = 'class="main-svg"'


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_health(base: str, server: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"mlflow ui exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"mlflow ui did not answer {base}/health within {timeout_s} s")


def pages(base: str, experiment_id: str, run_id: str) -> dict[str, str]:
    """Screenshot file name -> address."""
    experiment = f"{base}/#/experiments/{experiment_id}"
    return {
        "run_page.png": f"{experiment}/runs/{run_id}?{TRAINING_VIEW}",
        "run_plots.png": (f"{experiment}/runs/{run_id}/artifacts/plots/accuracy_coverage.png"
                          f"?{TRAINING_VIEW}"),
        "runs_table.png": f"{experiment}/runs?{TRAINING_VIEW}",
        CHART_VIEW: f"{experiment}/runs?compareRunsMode=CHART&{TRAINING_VIEW}",
    }


def chromium_argv(chromium: str, budget_ms: int) -> list[str]:
    return [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--window-size=1400,1000", f"--virtual-time-budget={budget_ms}"]


def screenshot(chromium: str, address: str, path: Path, budget_ms: int) -> None:
    subprocess.run([*chromium_argv(chromium, budget_ms), f"--screenshot={path}", address],
                   check=True, capture_output=True, timeout=300)


def charts_drawn(chromium: str, address: str, budget_ms: int) -> int:
    """How many charts the page holds after ``budget_ms`` of rendering (its DOM, in a second
    rendering with the screenshot's budget)."""
    dom = subprocess.run([*chromium_argv(chromium, budget_ms), "--dump-dom", address],
                         check=True, capture_output=True, text=True, timeout=300).stdout
    return dom.count(CHART_MARK)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend-store-uri", default=f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    parser.add_argument("--run-id", help="default: the newest run of the store")
    parser.add_argument("--output", default="screenshots", type=Path)
    parser.add_argument("--chromium", default="chromium")
    args = parser.parse_args()

    client = MlflowClient(args.backend_store_uri)
    if args.run_id:
        run = client.get_run(args.run_id)
    else:
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(experiments, order_by=["attributes.start_time DESC"],
                                  max_results=1)
        if not runs:
            sys.exit(f"{args.backend_store_uri}: no runs")
        run = runs[0]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", args.backend_store_uri,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_health(base, server)
        args.output.mkdir(parents=True, exist_ok=True)
        for name, address in pages(base, run.info.experiment_id, run.info.run_id).items():
            budget = CHART_BUDGET_MS if name == CHART_VIEW else RENDER_BUDGET_MS
            screenshot(args.chromium, address, args.output / name, budget)
            print(f"{args.output / name}: {address}")
            if name == CHART_VIEW:
                charts = charts_drawn(args.chromium, address, budget)
                if not charts:
                    sys.exit(f"{args.output / name}: the chart view drew no chart within "
                             f"{budget / 1000:.0f} s of rendering (still loading)")
                print(f"{args.output / name}: {charts} charts drawn")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
