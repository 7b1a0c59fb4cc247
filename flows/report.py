"""What a pipeline flow run leaves on the Prefect server: the metrics table, the provenance
summary and, for a deployment's run, what changed since the previous completed run."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from siamese import paths
from siamese.errors import PipelineError


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


def provenance_markdown(root: Path, results: list[dict[str, Any]]) -> str:
    """The run's data set fingerprint, params digest, git revision, stages and report paths."""
    from tools.lineage import dataset_fingerprint, git_revision, params_digest

    revision, dirty = git_revision(root)
    pictures = root / paths.REPORTS / "evaluate"
    reports = sorted(p.relative_to(root).as_posix() for p in pictures.rglob("*") if p.is_file())
    lines = [
        "# Omniglot pipeline run",
        "",
        f"- data set fingerprint: `{dataset_fingerprint(root) or 'not built'}`",
        f"- params digest (sha256 of params.yaml, canonical): `{params_digest(root)}`",
        f"- git revision: `{revision}`" + (" (tracked files changed since)" if dirty else ""),
        f"- metrics: `{paths.METRICS}`" + ("" if (root / paths.METRICS).exists() else " (absent)"),
        "",
        "| stage | outcome | seconds |",
        "|---|---|---|",
        *[f"| {r['stage']} | {r['outcome']} | {r['seconds']} |" for r in results],
        "",
        "## Reports and pictures",
        "",
        *([f"- `{p}`" for p in reports] or ["(none yet)"]),
    ]
    return "\n".join(lines) + "\n"


def changes_since_last_run(root: Path, this_run: str) -> str:
    """`siamese lineage --diff` as Markdown, from the git revision of the pipeline's previous
    completed flow run to this run's: what a scheduled run changed since the last one."""
    from tools import revisions, runs
    from tools.lineage import git_revision

    current, _ = git_revision(root)
    earlier = [runs.run_record(r, artifacts, None) for r, artifacts in runs.read_runs(None)
               if str(r.id) != this_run and r.state_name == "Completed"]
    previous = next((rec["git_revision"] for rec in reversed(earlier)
                     if rec["git_revision"] not in (None, "unknown")), None)
    if previous is None:
        return "# Changes since the previous run\n\nNo earlier completed run to compare with.\n"
    try:
        return "\n".join(revisions.format_diff(revisions.diff(previous, current, root))) + "\n"
    except PipelineError as e:
        return f"# Changes since the previous run ({previous[:10]})\n\nNot compared: {e}\n"


def publish_artifacts(root: Path, results: list[dict[str, Any]]) -> None:
    """The metrics table and the provenance summary; for a deployment's (scheduled) run, also
    what changed since the previous completed run."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.runtime import deployment, flow_run

    rows = metrics_rows(root)
    if rows:
        create_table_artifact(rows, key="omniglot-metrics", description=f"{paths.METRICS}")
    create_markdown_artifact(
        provenance_markdown(root, results), key="omniglot-provenance",
        description="data set fingerprint, params digest, git revision, reports",
    )
    if deployment.id is not None:
        create_markdown_artifact(
            changes_since_last_run(root, flow_run.id), key="omniglot-changes",
            description="siamese lineage --diff from the previous completed run to this one",
        )
