"""Screenshots of Prefect's UI for docs/operations.md: a pipeline flow run's page, its summary
artifact, and a failed run's page, taken with Debian's headless Chromium
(`apt-get install -y chromium`; Prefect's UI loads fully offline).

    .venv/bin/python docs/ui/screenshots.py        # writes docs/ui/*.png

It starts `prefect server start` on a free local port with a temporary Prefect home, runs the
tiny four-stage project of tests/test_flow_run_as_prefects_ui_shows_it.py (whose metrics are
this project's reports/metrics.json) three times: built, cached, then failing in train, shoots
the pages, and stops the server. Nothing in this checkout is written but the PNGs.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
WINDOW = "1440,1400"
WAIT_MS = "20000"  # Chromium's virtual time for the UI to fetch and draw the run
COLOURS = 128  # the PNGs are palette images: a few dozen KB each


def start_server(home: Path) -> tuple[subprocess.Popen, str]:
    from flows.server import free_port
    from tests.flowkit import OFFLINE

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    os.environ.update(OFFLINE, PREFECT_HOME=str(home),  # the UI asks this API, not :4200's
                      PREFECT_UI_API_URL=f"{url}/api", PREFECT_SERVER_UI_API_URL=f"{url}/api")
    server = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start",
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"{url}/api/health", timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    else:
        server.terminate()
        raise SystemExit(f"the Prefect server on {url} did not start in 2 minutes")
    os.environ["PREFECT_API_URL"] = f"{url}/api"
    return server, url


def run_flows(work: Path) -> dict[str, Any]:
    """The tiny project's runs: built, cached, failed; their final states."""
    from flows.pipeline import pipeline_flow
    from tests.flowkit import set_param
    from tests.test_flow_run_as_prefects_ui_shows_it import make_project

    project = make_project(work / "tiny")
    states = {"built": pipeline_flow(repo=str(project), return_state=True),
              "cached": pipeline_flow(repo=str(project), return_state=True)}
    set_param(project, "train", "fail", True)
    set_param(project, "train", "lr", 0.5)
    states["failed"] = pipeline_flow(repo=str(project), return_state=True)
    return states


def summary_artifact_id(state: Any) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
    )

    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["omniglot-summary"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    return str(artifact.id)


def train_task_id(state: Any) -> str:
    """The id of a flow run's train task run, whose page shows its state name."""
    from tests.flowkit import flow_run_records

    tasks, _, _ = flow_run_records(state.state_details.flow_run_id)
    return str(tasks["train"].id)


def shoot(url: str, png: Path, profile: Path) -> None:
    """One page, as Chromium draws it once the UI has loaded, as a small palette PNG."""
    from PIL import Image

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium: apt-get install -y chromium")
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={profile}", f"--window-size={WINDOW}",
                    f"--virtual-time-budget={WAIT_MS}", f"--screenshot={png}", url],
                   check=True, capture_output=True, timeout=180)
    Image.open(png).convert("RGB").quantize(COLOURS).save(png, optimize=True)
    print(f"{png.relative_to(REPO)}: {png.stat().st_size // 1024} KB ({url})")


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="ui-screenshots-"))
    server, url = start_server(work / "prefect-home")
    try:
        states = run_flows(work)
        run_id = {name: s.state_details.flow_run_id for name, s in states.items()}
        pages = {"run-page.png": f"{url}/runs/flow-run/{run_id['cached']}",
                 "task-run-page.png": f"{url}/runs/task-run/{train_task_id(states['cached'])}",
                 "runs-list.png": f"{url}/runs",
                 "summary-artifact.png": f"{url}/artifacts/artifact/"
                                         f"{summary_artifact_id(states['cached'])}",
                 "failed-run-page.png": f"{url}/runs/flow-run/{run_id['failed']}",
                 "failed-summary-artifact.png": f"{url}/artifacts/artifact/"
                                                f"{summary_artifact_id(states['failed'])}"}
        for name, page in pages.items():
            shoot(page, HERE / name, work / "chromium")
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
