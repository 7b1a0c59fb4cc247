"""A hung stage ends at the flow's stage_timeout_s, or at the run's timeout_s, in one line
naming it, its processes killed; a failed run is recorded as the artifact `omniglot-failure`
and sent to a webhook."""

import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from tests.flowkit import flow_run_records, make_tiny_project, set_param

pytestmark = pytest.mark.slow  # Prefect's temporary server and flow runs


@pytest.fixture
def pipeline(request):
    request.getfixturevalue("prefect_session")
    from flows import pipeline

    return pipeline


@pytest.fixture
def receiver():
    """A local webhook receiver: (its URL, the JSON bodies it got)."""
    got: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", got
    server.shutdown()


def test_a_hung_stage_ends_at_its_timeout_with_one_line(pipeline, tmp_path):
    project = make_tiny_project(tmp_path / "tiny")
    marker = tmp_path / "still-running"
    hang = f"python -c \"import time, pathlib; time.sleep(150); pathlib.Path('{marker}').touch()\""
    text = (project / "dvc.yaml").read_text()
    (project / "dvc.yaml").write_text(text.replace("cmd: python stages.py train", f"cmd: {hang}"))
    start = time.monotonic()
    state = pipeline.pipeline_flow(repo=str(project), stage_timeout_s=25, return_state=True)
    assert time.monotonic() - start < 120
    assert state.is_failed()
    assert state.message.startswith("stage 'train' timed out after 25 s (the flow's "
                                    "stage_timeout_s) and was killed")
    time.sleep(1)
    alive = subprocess.run(["pgrep", "-f", str(marker)], capture_output=True, text=True)
    assert alive.stdout == ""  # the stage's process was killed, not left to run on
    _, _, artifacts = flow_run_records(state.state_details.flow_run_id)
    assert "stage 'train' timed out" in artifacts["omniglot-failure"].data
    assert (project / "data/manifests/dataset.json").exists()  # earlier stages kept


def test_a_run_over_its_own_timeout_ends_in_the_stage_it_is_in_with_one_line(pipeline, tmp_path):
    """timeout_s bounds the whole run: its first stage already outlasts it here."""
    project = make_tiny_project(tmp_path / "tiny")
    text = (project / "dvc.yaml").read_text()
    hang = "python -c \"import time; time.sleep(150)\""
    (project / "dvc.yaml").write_text(text.replace("cmd: python stages.py fetch", f"cmd: {hang}"))
    start = time.monotonic()
    state = pipeline.pipeline_flow(repo=str(project), stage_timeout_s=100, timeout_s=6,
                                   return_state=True)
    assert time.monotonic() - start < 60
    assert state.is_failed() and "\n" not in state.message
    assert state.message.startswith("stage 'fetch' timed out after ")
    assert state.message.endswith(" s (the flow's timeout_s: 6 s in all) and was killed; "
                                  "earlier stages' outputs are intact")


def test_a_failed_run_reaches_the_webhook(pipeline, tmp_path, receiver):
    url, got = receiver
    project = make_tiny_project(tmp_path / "tiny")
    set_param(project, "train", "fail", True)
    state = pipeline.pipeline_flow(repo=str(project), notify_url=url, return_state=True)
    assert state.is_failed()
    assert len(got) == 1 and got[0]["state"] == "Failed"
    assert got[0]["id"] == str(state.state_details.flow_run_id)
    assert "stage 'train' failed" in got[0]["message"] and "boom" in got[0]["message"]


def test_a_successful_run_sends_nothing(pipeline, tmp_path, receiver):
    url, got = receiver
    project = make_tiny_project(tmp_path / "tiny")
    assert pipeline.pipeline_flow(repo=str(project), notify_url=url, return_state=True) \
        .is_completed()
    assert got == [] and Path(project / "reports/metrics.json").exists()
