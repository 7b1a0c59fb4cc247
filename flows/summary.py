"""A pipeline flow run at a glance, as the operator reads it in Prefect's UI: the Markdown of
the artifact `omniglot-summary` (the outcome, each stage's outcome and time, the README's
results table, the provenance), the run's name and tags, and each stage's state name.

The results table is the README's own block, made by `siamese readme`'s code (tools/readme.py)
run as a command, as flows/report.py runs `siamese lineage --diff`: the flows sit below the
commands (pyproject.toml's import layers), so the table is written once, there.
"""

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from siamese import paths
from siamese.provenance import dataset_fingerprint, params_digest

SUMMARY_KEY = "omniglot-summary"
STATE_NAMES = {"ran": "Ran", "up to date": "Up to date", "restored": "Restored"}
README_RESULTS = ("import sys; from pathlib import Path; from tools.readme import results; "
                  "print(results(Path(sys.argv[1])))")


@dataclass
class RunRecord:
    """What a flow run did, filled in as it goes: the stages in DVC's order, each finished
    stage's row (stage, outcome, seconds), and why it failed (None: it has not)."""

    found: tuple[str, bool]  # (git revision, dirty) as the run found the tree
    stages: list[str] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    failure: str | None = None
    failed_stage: str | None = None
    tail: list[str] = field(default_factory=list)
    completed: bool = False

    def fail(self, message: str, stage: str | None = None, tail: list[str] | None = None) -> None:
        self.failure, self.failed_stage, self.tail = message, stage, tail or []


def state_name(outcome: str) -> str:
    """The name a stage's Completed state carries in Prefect's UI ("Up to date", "Ran", ...)."""
    return STATE_NAMES.get(outcome, "Completed")


def short(value: str | None, length: int = 8) -> str:
    return "none" if value is None else value[:length]


def run_label(root: Path, found: tuple[str, bool]) -> tuple[str, list[str]]:
    """The run's name and tags: what ran (the short git revision, clean or dirty, the params
    digest) and on which data (its fingerprint), so runs can be told apart and filtered."""
    revision, dirty = short(found[0]), "dirty" if found[1] else "clean"
    digest = short(params_digest(root), 6)
    tags = [f"rev:{revision}", dirty, f"params:{digest}"]
    fingerprint = safe(dataset_fingerprint, root)
    if fingerprint:
        tags.append(f"data:{short(fingerprint)}")
    return f"{revision}-{dirty}-params-{digest}", tags


def safe(read: Any, root: Path) -> Any:
    """`read(root)`, or None where the file it reads is missing or unreadable: a summary
    says what it can."""
    try:
        return read(root)
    except Exception:
        return None


def summary_markdown(root: Path, record: RunRecord) -> str:
    """The whole summary; a failed run's shows no figures: the workspace's are an earlier
    run's."""
    parts = [headline(record), stages_markdown(record)]
    if record.failure:
        parts.append(failure_markdown(record))
    parts.append(results_markdown(root) if record.completed else
                 "## Results\n\nNone: the run did not complete, and the workspace's "
                 f"`{paths.METRICS}` is an earlier run's.")
    parts.append(provenance_markdown(root, record))
    return "\n\n".join(parts) + "\n"


def headline(record: RunRecord) -> str:
    revision, dirty = short(record.found[0]), " (dirty)" if record.found[1] else ""
    if record.completed:
        outcome = "Completed"
    elif record.failed_stage:
        outcome = f"Failed in stage `{record.failed_stage}`"
    else:
        outcome = "Failed"
    return f"# {outcome}\n\nPipeline run at `{revision}`{dirty}."


def stages_markdown(record: RunRecord) -> str:
    done = {r["stage"]: r for r in record.results}
    lines = ["## Stages", "", "| stage | outcome | seconds |", "|---|---|---:|"]
    for stage in record.stages or list(done):
        row = done.get(stage)
        outcome = row["outcome"] if row else "not run"
        if outcome in ("failed", "timed out"):
            outcome = f"**{outcome}**"
        seconds = f"{row['seconds']:.1f}" if row else ""
        lines.append(f"| {stage} | {outcome} | {seconds} |")
    return "\n".join(lines)


def failure_markdown(record: RunRecord) -> str:
    where = f"Stage `{record.failed_stage}`" if record.failed_stage else "The run"
    first = (record.failure or "").splitlines()[0].removesuffix(" Its last lines:")
    text = f"## Failure\n\n{where}: {first}"
    if record.tail:
        text += "\n\nIts last lines:\n\n```\n" + "\n".join(record.tail) + "\n```"
    return text


def results_markdown(root: Path) -> str:
    """The README's results block, from this run's files."""
    done = subprocess.run([sys.executable, "-c", README_RESULTS, str(root)], cwd=root,
                          capture_output=True, text=True)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return f"## Results\n\nNo results table (`siamese readme`'s): {why}"
    return f"## Results\n\n{done.stdout.strip()}\n\nReport: `reports/evaluate/report.md`."


def provenance_markdown(root: Path, record: RunRecord) -> str:
    revision, dirty = record.found
    rows = [("git revision", f"`{short(revision, 10)}`, "
             + ("dirty: tracked files differed from it" if dirty else "clean")),
            ("data fingerprint", fingerprint_check(root)),
            ("params digest", f"`{short(safe(params_digest, root), 12)}`")]
    if record.completed:
        rows += [("model", model_line(root)), ("cpu_paths", f"`{train_param(root, 'cpu_paths')}`")]
    lines = ["## Provenance", "", "| | |", "|---|---|"]
    return "\n".join(lines + [f"| {name} | {value} |" for name, value in rows])


def fingerprint_check(root: Path) -> str:
    """The data set's fingerprint against params.yaml's index.expected_fingerprint."""
    found = safe(dataset_fingerprint, root)
    expected = (read_params(root).get("index") or {}).get("expected_fingerprint")
    if found is None:
        return "none (the index stage has not run)"
    if expected is None:
        return f"`{short(found, 12)}` (params.yaml expects none)"
    if found == expected:
        return f"`{short(found, 12)}`, as params.yaml's index.expected_fingerprint expects"
    return (f"`{short(found, 12)}`: **UNEXPECTED**, params.yaml's index.expected_fingerprint is "
            f"`{short(expected, 12)}`")


def model_line(root: Path) -> str:
    """models/model.pt's md5 in dvc.lock, and the best step the train stage recorded."""
    try:
        train = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["train"]
        md5 = next(o["md5"] for o in train["outs"] if o["path"] == paths.MODEL.as_posix())
    except (OSError, KeyError, TypeError, StopIteration, yaml.YAMLError):
        return f"no `{paths.MODEL}` in dvc.lock"
    try:
        best = json.loads((root / paths.TRAIN_LIVE / "metrics.json").read_text())["best_step"]
    except (OSError, KeyError, TypeError, ValueError):
        best = "?"
    return f"`{paths.MODEL}` md5 `{short(md5, 12)}`, best step {best}"


def read_params(root: Path) -> dict[str, Any]:
    try:
        params = yaml.safe_load((root / paths.PARAMS).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return params if isinstance(params, dict) else {}


def train_param(root: Path, key: str) -> Any:
    return (read_params(root).get("train") or {}).get(key)
