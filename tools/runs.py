"""`siamese lineage --runs [--since DATE]`: the pipeline's flow runs that a Prefect server holds.

The server at PREFECT_API_URL, else the local one (its database under PREFECT_HOME). Each run
is read from the artifacts it left (flows/pipeline.py): `omniglot-provenance` (data set
fingerprint, params digest, git revision and whether the tree was dirty, each stage's
outcome) and `omniglot-metrics` (the headline metrics). A run whose fingerprint is not
params.yaml's index.expected_fingerprint is flagged. Reads only.
"""

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from siamese import paths
from siamese.errors import PipelineError
from tools.lineage import emit

HEADLINE = ("evaluation/20-way/accuracy", "lake/20-way/accuracy", "valid/20-way/accuracy",
            "verification/accuracy")
FIELDS = {
    "fingerprint": re.compile(r"^- data set fingerprint: `([^`]*)`", re.M),
    "params_digest": re.compile(r"^- params digest[^:]*: `([^`]*)`", re.M),
    "git_revision": re.compile(r"^- git revision: `([^`]*)`", re.M),
}
STAGE_ROW = re.compile(r"^\| (?!stage \|)(?P<stage>[^|]+?) \| (?P<outcome>[^|-][^|]*?) \| "
                       r"(?P<seconds>[^|]*?) \|$", re.M)


def parse_since(text: str | None) -> datetime | None:
    """An ISO date or date-time; without a zone, UTC."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise PipelineError(f"--since {text!r}: not a date (YYYY-MM-DD[THH:MM])") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def provenance(markdown: str | None) -> dict[str, Any]:
    """The fields of an `omniglot-provenance` artifact (None where a run left none)."""
    text = markdown or ""
    found = {key: (m.group(1) if (m := pattern.search(text)) else None)
             for key, pattern in FIELDS.items()}
    found["dirty"] = "(tracked files changed since)" in text if markdown else None
    found["stages"] = {m["stage"]: m["outcome"] for m in STAGE_ROW.finditer(text)}
    return found


def headline(table: str | None) -> dict[str, Any]:
    rows = json.loads(table) if table else []
    values = {r["metric"]: r["value"] for r in rows if isinstance(r, dict) and "metric" in r}
    return {name: values[name] for name in HEADLINE if name in values}


def run_record(flow_run: Any, artifacts: dict[str, Any], expected: str | None) -> dict[str, Any]:
    record = {
        "id": str(flow_run.id), "name": flow_run.name,
        "deployment": str(flow_run.deployment_id) if flow_run.deployment_id else None,
        "start": flow_run.start_time.isoformat() if flow_run.start_time else None,
        "state": flow_run.state_name,
        **provenance(getattr(artifacts.get("omniglot-provenance"), "data", None)),
        "metrics": headline(getattr(artifacts.get("omniglot-metrics"), "data", None)),
    }
    record["unexpected_fingerprint"] = (None if expected is None
                                        else record["fingerprint"] != expected)
    return record


def read_runs(since: datetime | None, ids: list[Any] | None = None
              ) -> list[tuple[Any, dict[str, Any]]]:
    """(flow run, {artifact key: artifact}) for the pipeline's runs (started since `since`,
    with one of `ids`), oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterStartTime,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    from flows.pipeline import FLOW_NAME
    from flows.server import check_api

    check_api()
    when = FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since) if since else None,
                         id=FlowRunFilterId(any_=ids) if ids else None)
    with get_client(sync_client=True) as client:
        found = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
                                      flow_run_filter=when, sort=FlowRunSort.START_TIME_ASC)
        ids = FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in found]))
        artifacts = client.read_artifacts(flow_run_filter=ids) if found else []
    by_run: dict[Any, dict[str, Any]] = {}
    for artifact in artifacts:
        by_run.setdefault(artifact.flow_run_id, {})[artifact.key] = artifact
    return [(r, by_run.get(r.id, {})) for r in found]


def run_revision(run_id: str) -> str:
    """The git revision that flow run `run_id` recorded in its provenance artifact."""
    from uuid import UUID

    found = read_runs(None, ids=[UUID(run_id)])
    if not found:
        raise PipelineError(f"flow run {run_id}: not on the Prefect server")
    revision = run_record(*found[0], None)["git_revision"]
    if revision in (None, "unknown"):
        raise PipelineError(f"flow run {run_id}: recorded no git revision")
    return revision


def expected_fingerprint(root: Path) -> str | None:
    from siamese.config import load_params

    path = root / paths.PARAMS
    return load_params(path).get("index", {}).get("expected_fingerprint") if path.exists() \
        else None


def list_runs(since: str | None = None, root: Path | None = None) -> dict[str, Any]:
    """The pipeline's flow runs (since `since`), each with what its artifacts say."""
    expected = expected_fingerprint((root or Path.cwd()).resolve())
    runs = [run_record(r, a, expected) for r, a in read_runs(parse_since(since))]
    return {"expected_fingerprint": expected, "since": since, "runs": runs}


def format_runs(rec: dict[str, Any]) -> list[str]:
    lines = [f"{len(rec['runs'])} flow run(s)" + (f" since {rec['since']}" if rec["since"] else "")
             + f"; expected fingerprint {rec['expected_fingerprint'] or 'not set'}", ""]
    lines += ["| start | run | state | git revision | fingerprint | params digest | stages | "
              "metrics |", "|---|---|---|---|---|---|---|---|"]
    for r in rec["runs"]:
        revision = (r["git_revision"] or "?")[:10] + (" (dirty)" if r["dirty"] else "")
        mark = " **UNEXPECTED**" if r["unexpected_fingerprint"] else ""
        stages = ", ".join(f"{s} {o}" for s, o in r["stages"].items()) or "none"
        metrics = ", ".join(f"{k.removesuffix('/accuracy')} {v}" for k, v in r["metrics"].items())
        lines.append(f"| {r['start']} | {r['name']} | {r['state']} | {revision} | "
                     f"{(r['fingerprint'] or '?')[:12]}{mark} | {(r['params_digest'] or '?')[:12]} "
                     f"| {stages} | {metrics or 'none'} |")
    return lines


def run(since: str | None = None, as_json: bool = False, out: TextIO | None = None
        ) -> dict[str, Any]:
    """`siamese lineage --runs [--since DATE] [--json]`."""
    record = list_runs(since)
    emit(record, format_runs, as_json, out)
    return record
