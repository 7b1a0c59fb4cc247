"""`siamese lineage --diff A B`: what changed between two revisions of the project.

A and B are git revisions, DVC experiment names (refs/exps) or Prefect flow-run ids (the
revision the run recorded). For each: params.yaml,
dvc.lock and reports/metrics.json as committed (`git show`), and the image and split
manifests that dvc.lock names, read from the DVC cache by their md5. Nothing is checked out
or written: the workspace stays as it is.
"""

import hashlib
import io
import json
import re
import subprocess
from pathlib import Path
from typing import Any, TextIO

import pandas as pd
import yaml

from siamese import paths
from siamese.errors import PipelineError
from tools.lineage import covers, emit, entry_hash, flat_params, producer, resolved

LOCK = "dvc.lock"
SAMPLES = 10  # paths listed per kind of image change
FLOW_RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def resolve(root: Path, name: str) -> str:
    """The commit of a git revision, of the DVC experiment called `name`, or of the Prefect
    flow run with that id (the git revision its provenance artifact records)."""
    done = git(root, "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}")
    if done.returncode == 0:
        return done.stdout.strip()
    refs = git(root, "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps").stdout
    found = dict(line.rsplit(" ", 1) for line in refs.splitlines()
                 if line.split(" ", 1)[0].rsplit("/", 1)[-1] == name)
    if len(set(found.values())) > 1:
        raise PipelineError(f"{name!r}: DVC experiments of that name under several baselines "
                            f"({', '.join(sorted(found))}); give the one meant by its ref")
    if found:
        return next(iter(found.values()))
    if FLOW_RUN_ID.fullmatch(name):
        from tools.runs import run_revision

        return resolve(root, run_revision(name))
    raise PipelineError(f"{name!r}: neither a git revision nor a DVC experiment in {root}")


def show(root: Path, commit: str, path: str) -> str | None:
    """The text of `path` at `commit`, or None when the revision has no such file."""
    done = git(root, "show", f"{commit}:{path}")
    return done.stdout if done.returncode == 0 else None


def yaml_at(root: Path, commit: str, label: str, path: str) -> Any:
    text = show(root, commit, path)
    if text is None:
        raise PipelineError(f"{path}: not in revision {label}")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PipelineError(f"{path} at {label}: not valid YAML ({e})") from None


def diff_values(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Each key whose value differs: {name, from, to, change: added | removed | changed}."""
    rows = []
    for name in sorted(a.keys() | b.keys()):
        if name not in a:
            rows.append({"name": name, "from": None, "to": b[name], "change": "added"})
        elif name not in b:
            rows.append({"name": name, "from": a[name], "to": None, "change": "removed"})
        elif a[name] != b[name]:
            rows.append({"name": name, "from": a[name], "to": b[name], "change": "changed"})
    return rows


def cache_dir(root: Path) -> Path:
    """The folder of the project's DVC cache holding objects by md5 (`xx/yyyy...`)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            return Path(repo.cache.local.path)
    except DvcException as e:
        raise PipelineError(f"{root}: not a DVC project ({e})") from None


def manifest_at(stages: dict[str, Any], target: Path, label: str, cache: Path) -> pd.DataFrame:
    """A manifest as dvc.lock at `label` records it, read from the DVC cache by its md5."""
    name = producer(stages, target.as_posix())
    out = next((o for o in stages[name]["outs"] if o["path"] == target.as_posix()), None) \
        if name else None
    if out is None:
        raise PipelineError(f"{target}: not recorded in {LOCK} at {label}; was it built there?")
    md5 = entry_hash(out)
    if md5 is None:
        raise PipelineError(f"{target}: no md5 recorded in {LOCK} at {label}")
    path = cache / md5[:2] / md5[2:]
    if not path.is_file():
        raise PipelineError(f"{target} at {label} (md5 {md5}): not in the DVC cache ({path}); "
                            "`dvc fetch` it from the remote first")
    data = path.read_bytes()
    if hashlib.md5(data).hexdigest() != md5:
        raise PipelineError(f"{path}: the DVC cache object of {target} at {label} does not "
                            f"match its md5 {md5}; delete it and `dvc fetch` it again")
    return pd.read_parquet(io.BytesIO(data))


def images_at(root: Path, commit: str, label: str, cache: Path) -> pd.DataFrame:
    """path -> sha256, role (None where no split was recorded) at one revision."""
    lock = yaml_at(root, commit, label, LOCK)
    stages = lock.get("stages", {}) if isinstance(lock, dict) else {}
    images = manifest_at(stages, paths.IMAGES, label, cache)[["image_id", "path", "sha256"]]
    if producer(stages, paths.SPLIT.as_posix()) is None:
        return images.assign(role=None).set_index("path")
    split = manifest_at(stages, paths.SPLIT, label, cache)
    return images.merge(split, on="image_id", how="left").set_index("path")


def by_role(roles: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in roles.fillna("none").value_counts().sort_index().items()}


def diff_images(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, Any]:
    """Images added, removed, changed (same path, other sha256), and whose role changed."""
    added = b.index.difference(a.index)
    removed = a.index.difference(b.index)
    both = a.index.intersection(b.index)
    changed = both[(a.loc[both, "sha256"] != b.loc[both, "sha256"]).to_numpy()]
    moved = both[(a.loc[both, "role"].fillna("none") != b.loc[both, "role"].fillna("none"))
                 .to_numpy()]
    moves = (a.loc[moved, "role"].fillna("none") + " -> " + b.loc[moved, "role"].fillna("none"))
    return {
        "images": {"from": len(a), "to": len(b)},
        "added": {"count": len(added), "by_role": by_role(b.loc[added, "role"]),
                  "paths": sorted(added)[:SAMPLES]},
        "removed": {"count": len(removed), "by_role": by_role(a.loc[removed, "role"]),
                    "paths": sorted(removed)[:SAMPLES]},
        "changed": {"count": len(changed), "by_role": by_role(b.loc[changed, "role"]),
                    "paths": sorted(changed)[:SAMPLES]},
        "role_changed": {"count": len(moved), "by_move": by_role(moves)},
    }


def stage_deps(root: Path, commit: str) -> dict[str, list[str]]:
    """dep path -> the stages of dvc.yaml (at `commit`) that depend on it, for deps that no
    stage writes (code and other files that git tracks)."""
    text = show(root, commit, "dvc.yaml")
    text = resolved(text, show(root, commit, "params.yaml")) if text else text
    stages = (yaml.safe_load(text) or {}).get("stages", {}) if text else {}
    outs = set()
    for stage in stages.values():
        for key in ("outs", "metrics", "plots"):
            outs |= {o if isinstance(o, str) else next(iter(o)) for o in stage.get(key) or []}
    deps: dict[str, list[str]] = {}
    for name, stage in stages.items():
        for dep in stage.get("deps") or []:
            if not any(covers(out, dep) for out in outs):
                deps.setdefault(dep, []).append(name)
    return deps


def code_changed(root: Path, a: str, b: str) -> list[dict[str, Any]]:
    """Files that differ between the revisions and that a stage depends on (params.yaml, the
    params stage's dep, aside: its changes are the diff's parameters)."""
    deps = stage_deps(root, a)
    for dep, names in stage_deps(root, b).items():
        deps[dep] = sorted(set(deps.get(dep, [])) | set(names))
    deps.pop(paths.PARAMS.as_posix(), None)
    files = git(root, "diff", "--name-only", "--no-renames", a, b).stdout.split()
    rows = []
    for file in files:
        users = sorted({s for dep, names in deps.items() if covers(dep, file) for s in names})
        if users:
            rows.append({"file": file, "stages": users})
    return rows


def metrics_at(root: Path, commit: str, label: str) -> dict[str, dict[str, Any]]:
    """name -> {value, ci95}: every number of reports/metrics.json; accuracies with their
    95% interval. {} where the revision has no metrics."""
    text = show(root, commit, paths.METRICS.as_posix())
    if text is None:
        return {}
    try:
        metrics = json.loads(text)
    except json.JSONDecodeError as e:
        raise PipelineError(f"{paths.METRICS} at {label}: not valid JSON ({e})") from None
    found: dict[str, dict[str, Any]] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}/{key}" if prefix else key
            if isinstance(value, dict):
                walk(value, name)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                ci = node.get("ci95") if key == "accuracy" else None
                found[name] = {"value": value, "ci95": ci}

    walk(metrics if isinstance(metrics, dict) else {}, "")
    return found


def diff_metrics(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]
                 ) -> list[dict[str, Any]]:
    """Each metric: from, to, change, and whether the new value lies outside the old 95%
    interval (None without an interval)."""
    rows = []
    for name in sorted(a.keys() | b.keys()):
        old, new = a.get(name, {}).get("value"), b.get(name, {}).get("value")
        ci = a.get(name, {}).get("ci95")
        change = None if old is None or new is None else round(new - old, 6)
        outside = None if ci is None or new is None else not ci[0] <= new <= ci[1]
        rows.append({"metric": name, "from": old, "to": new, "change": change,
                     "ci95_from": ci, "outside_ci95": outside})
    return rows


def diff(a: str, b: str, root: Path | None = None) -> dict[str, Any]:
    """Everything that differs between revisions (or experiments) `a` and `b`."""
    root = (root or Path.cwd()).resolve()
    ca, cb = resolve(root, a), resolve(root, b)
    params = [yaml_at(root, c, label, paths.PARAMS.as_posix()) for c, label in ((ca, a), (cb, b))]
    cache = cache_dir(root)
    return {
        "from": {"name": a, "commit": ca}, "to": {"name": b, "commit": cb},
        "params": diff_values(*(flat_params({"params.yaml": p or {}}) for p in params)),
        "images": diff_images(images_at(root, ca, a, cache), images_at(root, cb, b, cache)),
        "code": code_changed(root, ca, cb),
        "metrics": diff_metrics(metrics_at(root, ca, a), metrics_at(root, cb, b)),
    }


def counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def format_diff(rec: dict[str, Any]) -> list[str]:
    """The diff as Markdown."""
    a, b = rec["from"], rec["to"]
    lines = [f"# Changes from `{a['name']}` ({a['commit'][:10]}) to `{b['name']}` "
             f"({b['commit'][:10]})", "", f"## Parameters: {len(rec['params'])} changed", ""]
    lines += [f"- `{p['name']}`: {json.dumps(p['from'])} -> {json.dumps(p['to'])}"
              for p in rec["params"]]
    img = rec["images"]
    lines += ["", f"## Images: {img['images']['from']} -> {img['images']['to']}", ""]
    for kind in ("added", "removed", "changed"):
        roles = counts_text(img[kind]["by_role"])
        lines.append(f"- {kind}: {img[kind]['count']} (by role: {roles})")
        lines += [f"  - `{p}`" for p in img[kind]["paths"]]
    lines.append(f"- role changed: {img['role_changed']['count']} "
                 f"({counts_text(img['role_changed']['by_move'])})")
    lines += ["", f"## Code: {len(rec['code'])} file(s) that stages depend on", ""]
    lines += [f"- `{c['file']}` ({', '.join(c['stages'])})" for c in rec["code"]]
    lines += ["", "## Metrics", ""]
    if rec["metrics"]:
        lines += ["| metric | from | to | change | outside the old 95% interval |",
                  "|---|---|---|---|---|"]
        verdict = {True: "**yes**", False: "no", None: ""}
        lines += [f"| {m['metric']} | {m['from']} | {m['to']} | {m['change']} | "
                  f"{verdict[m['outside_ci95']]} |" for m in rec["metrics"]]
    else:
        lines.append(f"No {paths.METRICS} at either revision.")
    return lines


def run(a: str, b: str, as_json: bool = False, out: TextIO | None = None) -> dict[str, Any]:
    """`siamese lineage --diff A B [--json]`."""
    record = diff(a, b)
    emit(record, format_diff, as_json, out)
    return record
