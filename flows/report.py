"""What a pipeline flow run leaves on the Prefect server, as data, and how it is read back.

Each run leaves `omniglot-summary` (Markdown, the run at a glance: flows/summary.py) and
table artifacts (JSON rows): `omniglot-metrics` (the metrics; a completed run's only),
`omniglot-provenance` (one row: git revision, whether tracked files differed from it when the
run started, data set fingerprint, params digest) and `omniglot-stages` (each stage's outcome,
a failed one's too); a failed run leaves `omniglot-failure` (the stage and its last lines);
a deployment's run also leaves `omniglot-changes`, what changed since the previous completed
run (`siamese lineage --diff`, run as a command, as the stages run `dvc`).
"""

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from flows.summary import SUMMARY_KEY, RunRecord, failure_markdown, summary_markdown
from siamese import paths
from siamese.provenance import dataset_fingerprint, params_digest

METRICS_KEY = "omniglot-metrics"
PROVENANCE_KEY = "omniglot-provenance"
STAGES_KEY = "omniglot-stages"
CHANGES_KEY = "omniglot-changes"
FAILURE_KEY = "omniglot-failure"
PAGE = 200  # rows per read: the Prefect server's own cap
RUNS_PER_READ = 50  # flow runs whose artifacts are read at once (a few each)


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """("valid/20-way/accuracy", 0.9), ... for a nested dict of metrics; lists as text."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from flatten(inner, f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(value, list):
        yield prefix, ", ".join(str(v) for v in value)
    else:
        yield prefix, value


def metrics_rows(root: Path) -> list[dict[str, Any]]:
    path = root / paths.METRICS
    if not path.exists():
        return []
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        return [{"metric": f"{paths.METRICS} is not valid JSON", "value": str(e)}]
    return [{"metric": name, "value": value} for name, value in flatten(metrics)]


def provenance_row(root: Path, found: tuple[str, bool]) -> dict[str, Any]:
    """The run's provenance; `found`: (git revision, dirty) as the run found the tree, before
    its stages rewrote dvc.lock and the tracked reports."""
    revision, dirty = found
    return {"git_revision": revision, "dirty": dirty,  # first: what the UI's narrow table shows
            "fingerprint": dataset_fingerprint(root), "params_digest": params_digest(root),
            "metrics": paths.METRICS.as_posix() if (root / paths.METRICS).exists() else None}


def read_runs(flow_name: str, since: datetime | None = None, ids: list[Any] | None = None
              ) -> list[tuple[Any, dict[str, Any]]]:
    """(flow run, {artifact key: artifact}) for the runs of flow `flow_name` (started since
    `since`, with one of `ids`), oldest first, read page by page."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterStartTime,
    )
    from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort

    when = FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)  # type: ignore[arg-type]
                         if since else None,
                         id=FlowRunFilterId(any_=ids) if ids else None)
    flows = FlowFilter(name=FlowFilterName(any_=[flow_name]))
    with get_client(sync_client=True) as client:
        found = read_all(lambda offset: client.read_flow_runs(
            flow_filter=flows, flow_run_filter=when, sort=FlowRunSort.ID_DESC, limit=PAGE,
            offset=offset))
        by_run: dict[Any, dict[str, Any]] = {}
        for start in range(0, len(found), RUNS_PER_READ):
            chunk = FlowRunFilter(id=FlowRunFilterId(
                any_=[r.id for r in found[start:start + RUNS_PER_READ]]))
            for artifact in read_all(lambda offset, chunk=chunk: client.read_artifacts(
                    flow_run_filter=chunk, sort=ArtifactSort.ID_DESC, limit=PAGE, offset=offset)):
                by_run.setdefault(artifact.flow_run_id, {})[artifact.key] = artifact
    found.sort(key=lambda r: (r.start_time is None, r.start_time or r.created, str(r.id)))
    return [(r, by_run.get(r.id, {})) for r in found]


def read_all(read_page: Any) -> list[Any]:
    """Every row of a paged read: `read_page(offset)` returns at most PAGE rows."""
    rows: list[Any] = []
    while True:
        page = read_page(len(rows))
        rows += page
        if len(page) < PAGE:
            return rows


def table(artifact: Any) -> list[dict[str, Any]]:
    """The rows of a table artifact; [] for none, or for one of another kind."""
    try:
        rows = json.loads(getattr(artifact, "data", None) or "[]")
    except (TypeError, json.JSONDecodeError):
        return []
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def previous_revision(flow_name: str, this_run: str) -> str | None:
    """The git revision of the latest completed run of `flow_name` other than `this_run`."""
    for run, artifacts in reversed(read_runs(flow_name)):
        rows = table(artifacts.get(PROVENANCE_KEY))
        revision = rows[0].get("git_revision") if rows else None
        if str(run.id) != this_run and run.state_name == "Completed" \
                and revision not in (None, "unknown"):
            return revision
    return None


def changes_since(root: Path, previous: str | None, current: str) -> str:
    """`siamese lineage --diff PREVIOUS CURRENT` in `root`, as Markdown."""
    if previous is None:
        return "# Changes since the previous run\n\nNo earlier completed run to compare with.\n"
    done = subprocess.run([sys.executable, "-m", "tools.cli", "lineage", "--diff", previous,
                           current], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        why = why.removeprefix("siamese lineage: error: ")
        return f"# Changes since the previous run ({previous[:10]})\n\nNot compared: {why}\n"
    return done.stdout


def publish_artifacts(root: Path, record: RunRecord, flow_name: str) -> None:
    """The summary, provenance and stage tables, and for a completed run the metrics (a failed
    run's workspace holds an earlier run's); a failed run's failure; for a deployment's
    (scheduled) run, also what changed since the previous completed run."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.runtime import deployment, flow_run

    create_markdown_artifact(summary_markdown(root, record), key=SUMMARY_KEY,
                             description="the run at a glance: outcome, stages, results, "
                                         "provenance")
    if record.failure:
        create_markdown_artifact(f"# The run failed\n\n{failure_markdown(record)}\n",
                                 key=FAILURE_KEY,
                                 description="the failing stage and its last lines")
    rows = metrics_rows(root) if record.completed else []
    if rows:
        create_table_artifact(rows, key=METRICS_KEY, description=f"{paths.METRICS}")
    create_table_artifact([provenance_row(root, record.found)], key=PROVENANCE_KEY,
                          description="git revision, dirty, data set fingerprint, params digest")
    if record.results:
        create_table_artifact(record.results, key=STAGES_KEY,
                              description="each stage's outcome and seconds")
    if deployment.id is not None:
        previous = previous_revision(flow_name, flow_run.id)
        create_markdown_artifact(
            changes_since(root, previous, record.found[0]), key=CHANGES_KEY,
            description="siamese lineage --diff from the previous completed run to this one",
        )
