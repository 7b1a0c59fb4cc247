"""`siamese lineage --runs`: the pipeline's flow runs on the Prefect server, read back from the
artifacts each run leaves; a fingerprint other than the expected one is flagged."""

import json
from datetime import UTC, datetime

import pytest

from siamese.provenance import params_digest
from tests.flowkit import BIN, git_commit_all, make_tiny_project, run, set_param
from tools import runs

pytestmark = pytest.mark.slow  # Prefect's temporary server and two flow runs: ~35 s


@pytest.fixture(scope="module")
def two_runs(request, tmp_path_factory):
    """The tiny project run twice as a flow (all stages, then none): (project, since, ids)."""
    request.getfixturevalue("prefect_session")
    from flows.pipeline import pipeline_flow

    project = make_tiny_project(tmp_path_factory.mktemp("runs") / "tiny")
    since = datetime.now(UTC).isoformat()
    ids = [str(pipeline_flow(repo=str(project), return_state=True).state_details.flow_run_id)
           for _ in range(2)]
    return project, since, ids


def test_runs_lists_each_run_with_its_provenance_and_metrics(two_runs):
    project, since, ids = two_runs
    rec = runs.list_runs(since=since, root=project)
    assert [r["id"] for r in rec["runs"]] == ids
    first, second = rec["runs"]
    stages = ["fetch", "index", "train", "evaluate"]
    assert first["stages"] == dict.fromkeys(stages, "ran")
    assert second["stages"] == dict.fromkeys(stages, "up to date")
    fingerprint = json.loads((project / "data/manifests/dataset.json").read_text())["fingerprint"]
    head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    for r in rec["runs"]:
        assert r["state"] == "Completed" and r["fingerprint"] == fingerprint
        assert r["git_revision"] == head and r["dirty"] is False
        assert r["params_digest"] == params_digest(project)
        assert r["metrics"] == {"valid/20-way/accuracy": 0.75}
        assert r["unexpected_fingerprint"] is None  # the tiny project expects none
    text = "\n".join(runs.format_runs(rec))
    assert text.startswith(f"2 flow run(s) since {since}") and "valid/20-way 0.75" in text


def test_a_run_with_another_fingerprint_is_flagged(two_runs, tmp_path):
    project, since, _ = two_runs
    (tmp_path / "params.yaml").write_text("index:\n  expected_fingerprint: '0000'\n")
    rec = runs.list_runs(since=since, root=tmp_path)
    assert [r["unexpected_fingerprint"] for r in rec["runs"]] == [True, True]
    assert "**UNEXPECTED**" in "\n".join(runs.format_runs(rec))
    assert runs.list_runs(since="2999-01-01", root=project)["runs"] == []


def test_unreachable_server_and_bad_dates_are_one_line_errors(request, tmp_path):
    request.getfixturevalue("prefect_session")  # before prefect is first imported
    from flows.server import free_port

    url = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    done = run([str(BIN / "siamese"), "lineage", "--runs"], tmp_path, check=False,
               PREFECT_API_URL=url)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert f"PREFECT_API_URL={url}: the Prefect server does not answer" in done.stderr
    done = run([str(BIN / "siamese"), "lineage", "--runs", "--since", "yesterday"], tmp_path,
               check=False)
    assert done.returncode == 1 and "--since 'yesterday': not a date" in done.stderr


def test_diff_takes_a_flow_run_id_for_the_revision_it_ran(two_runs):
    from siamese.errors import PipelineError
    from tools import revisions

    project, _, ids = two_runs
    head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert revisions.resolve(project, ids[0]) == head
    with pytest.raises(PipelineError, match="flow run 00000000-0000-0000-0000-000000000000: not"):
        revisions.resolve(project, "00000000-0000-0000-0000-000000000000")


def test_runs_past_the_servers_page_of_200_are_all_read_oldest_first(request):
    """205 runs with their artifacts, made through Prefect's client (no flow runs): every run,
    in order, keeps its provenance (the server returns at most 200 rows a read)."""
    request.getfixturevalue("prefect_session")
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate
    from prefect.states import Completed

    from flows.pipeline import FLOW_NAME

    @flow(name=FLOW_NAME)
    def stand_in() -> None:
        """Names the runs; never called."""

    with get_client(sync_client=True) as client:
        for i in range(205):
            made = client.create_flow_run(stand_in, name=f"paged-{i:03d}", state=Completed())
            row = {"fingerprint": f"fp{i}", "params_digest": "d", "git_revision": f"rev{i}",
                   "dirty": False, "metrics": None}
            client.create_artifact(ArtifactCreate(key="omniglot-provenance", type="table",
                                                  data=json.dumps([row]), flow_run_id=made.id))
    found = [r for r in runs.list_runs()["runs"] if r["name"].startswith("paged-")]
    assert [r["name"] for r in found] == [f"paged-{i:03d}" for i in range(205)]
    assert [r["git_revision"] for r in found] == [f"rev{i}" for i in range(205)]


def test_dirty_is_the_tree_the_run_found_not_the_runs_own_writes(request, tmp_path):
    """A committed dvc.lock that the run itself rewrites leaves the run clean; an uncommitted
    edit before the run marks it dirty."""
    request.getfixturevalue("prefect_session")
    from flows.pipeline import pipeline_flow

    project = make_tiny_project(tmp_path / "tiny")
    run(["dvc", "repro"], project)
    git_commit_all(project, "built")
    set_param(project, "train", "lr", 0.5)
    git_commit_all(project, "lr 0.5")

    def dirty() -> bool:
        state = pipeline_flow(repo=str(project), return_state=True)
        [record] = runs.list_runs(root=project, ids=[state.state_details.flow_run_id])["runs"]
        return record["dirty"]

    assert dirty() is False
    assert "dvc.lock" in run(["git", "status", "--porcelain"], project).stdout  # rewritten
    git_commit_all(project, "rebuilt")
    set_param(project, "train", "lr", 0.25)  # not committed
    assert dirty() is True
