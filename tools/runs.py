"""`siamese lineage --runs [--since DATE]`: the pipeline's flow runs that a Prefect server holds.

The server at PREFECT_API_URL, else the local one (its database under PREFECT_HOME). Each run
is read from the table artifacts it left (flows/report.py): `omniglot-provenance` (data set
fingerprint, params digest, git revision and whether the tree was dirty when the run
started), `omniglot-stages` (each stage's outcome) and `omniglot-metrics` (the headline
metrics); every page of runs and artifacts, past the server's 200 rows a read. A run whose
fingerprint is not params.yaml's index.expected_fingerprint is flagged. Reads only.
"""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from flows import report
from siamese import paths
from siamese.errors import PipelineError
from tools.lineage import emit

HEADLINE = ("evaluation/20-way/accuracy", "lake/20-way/accuracy", "valid/20-way/accuracy",
            "verification/accuracy")
PROVENANCE_FIELDS = ("fingerprint", "params_digest", "git_revision", "dirty")


def parse_since(text: str | None) -> datetime | None:
    """An ISO date or date-time; without a zone, UTC."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise PipelineError(f"--since {text!r}: not a date (YYYY-MM-DD[THH:MM])") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def provenance(artifacts: dict[str, Any]) -> dict[str, Any]:
    """The provenance and stage outcomes a run left (None and {} where it left none)."""
    rows = report.table(artifacts.get(report.PROVENANCE_KEY))
    found = {key: rows[0].get(key) if rows else None for key in PROVENANCE_FIELDS}
    found["stages"] = {str(r.get("stage")): r.get("outcome")
                       for r in report.table(artifacts.get(report.STAGES_KEY))}
    return found


def headline(artifacts: dict[str, Any]) -> dict[str, Any]:
    values = {r["metric"]: r.get("value")
              for r in report.table(artifacts.get(report.METRICS_KEY)) if "metric" in r}
    return {name: values[name] for name in HEADLINE if name in values}


def run_record(flow_run: Any, artifacts: dict[str, Any], expected: str | None) -> dict[str, Any]:
    record = {
        "id": str(flow_run.id), "name": flow_run.name,
        "deployment": str(flow_run.deployment_id) if flow_run.deployment_id else None,
        "start": flow_run.start_time.isoformat() if flow_run.start_time else None,
        "state": flow_run.state_name,
        **provenance(artifacts),
        "metrics": headline(artifacts),
    }
    record["unexpected_fingerprint"] = (None if expected is None
                                        else record["fingerprint"] != expected)
    return record


def read_runs(since: datetime | None, ids: list[Any] | None = None
              ) -> list[tuple[Any, dict[str, Any]]]:
    """(flow run, {artifact key: artifact}) for the pipeline's runs, oldest first."""
    from flows.pipeline import FLOW_NAME
    from flows.server import check_api

    check_api()
    return report.read_runs(FLOW_NAME, since, ids)


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


def list_runs(since: str | None = None, root: Path | None = None,
              ids: list[Any] | None = None) -> dict[str, Any]:
    """The pipeline's flow runs (since `since`, with one of `ids`), each with what its
    artifacts say."""
    expected = expected_fingerprint((root or Path.cwd()).resolve())
    runs = [run_record(r, a, expected) for r, a in read_runs(parse_since(since), ids)]
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
