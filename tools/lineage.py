"""`siamese lineage`: where a metric, a model or an image came from.

For reports/metrics.json or a model: the git revision, and for the stage that wrote it and
every stage upstream, the params, input and output hashes recorded in dvc.lock, plus the
data set fingerprint, the images per role and the trial sets. For an image id: its file,
alphabet, character, drawer, sha256, role, and the training pairs and trials that use it.
dvc.lock is read as YAML (a stable format), so this needs neither DVC nor Prefect.
"""

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import yaml

from siamese import paths
from siamese.errors import PipelineError
from siamese.provenance import git_revision, params_digest
from siamese.zips import locate

LOCK = Path("dvc.lock")


def lock_revision(root: Path) -> tuple[str | None, bool]:
    """(the last commit that recorded dvc.lock or None, whether dvc.lock differs from it):
    the revision the outputs were built at, when they were committed."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    revision = git("log", "-1", "--format=%H", "--", str(LOCK)) or None
    return revision, bool(git("status", "--porcelain", "--", str(LOCK)))


def file_md5(path: Path) -> str | None:
    """md5 of a file's bytes, as dvc.lock records it; None for a folder or a missing file."""
    if not path.is_file():
        return None
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_lock(root: Path) -> dict[str, dict[str, Any]]:
    """The `stages` of dvc.lock: name -> {cmd, deps, params, outs}."""
    path = root / LOCK
    if not path.exists():
        raise PipelineError(f"{path}: not found; run the pipeline (`dvc repro` or `siamese run`)")
    try:
        lock = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise PipelineError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(lock, dict) or not isinstance(lock.get("stages"), dict):
        raise PipelineError(f"{path}: no 'stages' mapping; is it a DVC 3 lock file?")
    return lock["stages"]


def covers(outer: str, inner: str) -> bool:
    """Whether path `outer` is `inner` or a folder holding it."""
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def producer(stages: dict[str, dict[str, Any]], path: str) -> str | None:
    """The stage of dvc.lock with an output that is `path` or holds it."""
    for name, stage in stages.items():
        if any(covers(out["path"], path) for out in stage.get("outs", [])):
            return name
    return None


def declared_by(root: Path, path: str) -> str | None:
    """The stage of dvc.yaml that declares `path` (or a folder holding it) as an output."""
    try:
        stages = yaml.safe_load((root / "dvc.yaml").read_text()).get("stages", {})
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    for name, stage in stages.items():
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key) or []:
                out = entry if isinstance(entry, str) else next(iter(entry))
                if covers(out, path):
                    return name
    return None


def upstream(stages: dict[str, dict[str, Any]], name: str) -> list[str]:
    """`name` and every stage it depends on, through the deps of dvc.lock, upstream first."""
    order: list[str] = []

    def visit(stage: str) -> None:
        if stage in order:
            return
        for dep in stages[stage].get("deps", []):
            source = producer(stages, dep["path"])
            if source is not None and source != stage:
                visit(source)
        order.append(stage)

    visit(name)
    return order


def entry_hash(entry: dict[str, Any]) -> str | None:
    return entry.get("md5") or entry.get("etag") or entry.get("checksum")


def flat_params(params: dict[str, Any]) -> dict[str, Any]:
    """{"train.lr": 0.002, ...} from dvc.lock's {"params.yaml": {"train": {"lr": ...}}}."""
    flat: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(inner, f"{prefix}.{key}" if prefix else str(key))
        else:
            flat[prefix] = value

    for values in params.values():
        walk(values, "")
    return flat


def stage_record(stages: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    stage = stages[name]
    files = ("deps", "outs")
    record = {key: [{"path": e["path"], "md5": entry_hash(e)} for e in stage.get(key, [])]
              for key in files}
    return {"stage": name, "cmd": stage.get("cmd"),
            "params": flat_params(stage.get("params", {})), **record}


def stale_inputs(stages: dict[str, dict[str, Any]], chain: list[str]) -> list[str]:
    """Each dep whose hash in dvc.lock differs from what its producing stage last wrote."""
    problems = []
    for name in chain:
        for dep in stages[name].get("deps", []):
            source = producer(stages, dep["path"])
            if source in (None, name):
                continue
            out = next((o for o in stages[source]["outs"] if o["path"] == dep["path"]), None)
            if out is not None and entry_hash(out) != entry_hash(dep):
                problems.append(f"stage '{name}' was built from {dep['path']} md5 "
                                f"{entry_hash(dep)}, but '{source}' has since written "
                                f"{entry_hash(out)}: rerun the pipeline")
    return problems


def read_table(root: Path, path: Path, columns: list[str] | None = None):
    import pandas as pd

    if not (root / path).exists():
        return None
    try:
        return pd.read_parquet(root / path, columns=columns)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise PipelineError(f"{root / path}: cannot read it: {e}") from None


def data_summary(root: Path) -> dict[str, Any]:
    """The data set, the images per role and the trials per (set, n-way, k-shot), as built
    now."""
    summary: dict[str, Any] = {"dataset": None, "sources": None, "images_by_role": None,
                               "trials": None}
    for key, path in (("dataset", paths.DATASET), ("sources", paths.SOURCES)):
        if (root / path).exists():
            summary[key] = json.loads((root / path).read_text())
    split = read_table(root, paths.SPLIT, ["role"])
    if split is not None:
        summary["images_by_role"] = {k: int(v) for k, v in split["role"].value_counts().items()}
    trials = read_table(root, paths.TRIALS, ["trial_set", "n_way", "k_shot"])
    if trials is not None:
        counts = trials.groupby(["trial_set", "n_way", "k_shot"]).size()
        summary["trials"] = [{"trial_set": s, "n_way": int(n), "k_shot": int(k), "trials": int(c)}
                             for (s, n, k), c in counts.items()]
    return summary


def trial_kind(trial: dict[str, Any]) -> str:
    """"valid 20-way", or "vinyals 5-way 5-shot" for a trial set with several supports."""
    k_shot = trial.get("k_shot", 1)
    return f"{trial['trial_set']} {trial['n_way']}-way" + (f" {k_shot}-shot" if k_shot != 1 else "")


def artifact_lineage(root: Path, target: str) -> dict[str, Any]:
    """The lineage of an output of the pipeline (reports/metrics.json, models/model.pt, ...)."""
    stages = load_lock(root)
    path = Path(target)
    rel = (path.resolve().relative_to(root) if path.is_absolute() else path).as_posix()
    name = producer(stages, rel)
    if name is None and (declared := declared_by(root, rel)):
        raise PipelineError(f"{rel} is an output of stage '{declared}', which has not "
                            "run yet (not in dvc.lock); run the pipeline first")
    if name is None:
        raise PipelineError(f"{target!r} is not an output of any stage in dvc.lock, nor "
                            "an image id; try reports/metrics.json, models/model.pt or an image_id")
    recorded = next((entry_hash(o) for o in stages[name]["outs"] if o["path"] == rel), None)
    current = file_md5(root / rel)
    chain = upstream(stages, name)
    revision, dirty = git_revision(root)
    lock_rev, lock_changed = lock_revision(root)
    return {
        "target": rel, "stage": name, "md5": current, "lock_md5": recorded,
        "matches_lock": None if recorded is None or current is None else current == recorded,
        "git": {"revision": revision, "dirty": dirty, "lock_revision": lock_rev,
                "lock_uncommitted": lock_changed},
        "params_digest": params_digest(root),
        **data_summary(root),
        "stages": [stage_record(stages, s) for s in chain],
        "warnings": stale_inputs(stages, chain),
    }


def image_lineage(root: Path, image_id: int) -> dict[str, Any]:
    """Where one image comes from and which pairs and trials use it."""
    images = read_table(root, paths.IMAGES)
    if images is None:
        raise PipelineError(f"{paths.IMAGES}: not found; run the `index` stage first")
    rows = images[images["image_id"] == image_id]
    if rows.empty:
        raise PipelineError(f"image_id {image_id} is not in {paths.IMAGES} "
                            f"(ids 0..{len(images) - 1})")
    row = rows.iloc[0]
    keys = ("subset", "alphabet", "character", "character_id", "drawer", "path", "sha256")
    record: dict[str, Any] = {"image_id": image_id}
    record.update({k: row[k].item() if hasattr(row[k], "item") else row[k] for k in keys})
    record["file"] = image_source(root, row["path"])
    split = read_table(root, paths.SPLIT)
    if split is not None:
        roles = split.loc[split["image_id"] == image_id, "role"]
        record["role"] = roles.iloc[0] if len(roles) else None
    pairs = read_table(root, paths.PAIRS)
    if pairs is not None:
        used = pairs[(pairs["left_id"] == image_id) | (pairs["right_id"] == image_id)]
        record["pairs_by_role"] = {k: int(v) for k, v in used["role"].value_counts().items()}
    record["trials"] = image_trials(root, image_id)
    return record


TEMPLATE = re.compile(r"\$\{([\w.]+)\}")


def resolved(dvc_yaml: str, params_yaml: str | None) -> str:
    """dvc.yaml's text with each ${section.key} replaced by its value in params.yaml, as DVC
    resolves it (the index stage's input is ${dataset.source})."""
    params = yaml.safe_load(params_yaml or "") or {}

    def value(match: re.Match[str]) -> str:
        found: Any = params
        for key in match.group(1).split("."):
            if not isinstance(found, dict) or key not in found:
                raise PipelineError(f"dvc.yaml: ${{{match.group(1)}}} is not in params.yaml")
            found = found[key]
        return str(found)

    return TEMPLATE.sub(value, dvc_yaml)


def image_source(root: Path, path: str) -> str:
    """What holds the image at manifest `path`: its Omniglot zip, or your own folder or zip
    (dataset.source, as sources.json records it)."""
    sources = root / paths.SOURCES
    own = json.loads(sources.read_text()).get("source") if sources.exists() else None
    return own or (paths.RAW / locate(path)[0]).as_posix()


def image_trials(root: Path, image_id: int) -> list[dict[str, Any]] | None:
    """The trials that use the image, as the query or as a candidate."""
    trials = read_table(root, paths.TRIALS)
    if trials is None:
        return None
    found = []
    for t in trials.itertuples(index=False):
        as_query = t.query_id == image_id
        if as_query or image_id in t.candidate_ids:
            found.append({"trial_set": t.trial_set, "n_way": int(t.n_way),
                          "k_shot": int(t.k_shot), "trial_id": int(t.trial_id),
                          "as": "query" if as_query else "candidate"})
    return found


def format_artifact(rec: dict[str, Any]) -> list[str]:
    match = {True: "matches dvc.lock", False: "DIFFERS from dvc.lock (changed since the run)",
             None: "folder or not built"}[rec["matches_lock"]]
    lines = [
        f"{rec['target']}  (written by stage '{rec['stage']}'; md5 {rec['md5']}, {match})",
        f"git revision:   {rec['git']['revision']}"
        + ("  (uncommitted changes)" if rec["git"]["dirty"] else ""),
        f"dvc.lock from:  {rec['git']['lock_revision'] or 'never committed'}"
        + ("  (plus uncommitted runs)" if rec["git"]["lock_uncommitted"] else ""),
        f"params digest:  {rec['params_digest']}  (params.yaml now)",
    ]
    data = rec["dataset"]
    lines.append("data set:       " + (f"fingerprint {data['fingerprint']}, " + ", ".join(
        f"{data[k]} {k}" for k in ("images", "alphabets", "characters") if k in data)
        if data else "not built"))
    if rec["sources"] and "source" in rec["sources"]:  # your own images (tasks/index.py)
        lines.append(f"images from:    {rec['sources']['source']}, fingerprint "
                     f"{rec['sources']['images_fingerprint']}")
    elif rec["sources"]:
        lines.append(f"Lake's runs:    fingerprint {rec['sources']['runs_fingerprint']}")
        lines += [f"zip:            sha256 {digest}  {name}"
                  for name, digest in sorted(rec["sources"]["zips"].items())]
    roles = rec["images_by_role"]
    lines.append("images by role: " + (", ".join(f"{k} {v}" for k, v in sorted(roles.items()))
                                       if roles else "no split yet"))
    lines.append("trials:         " + (", ".join(
        f"{trial_kind(t)} {t['trials']}" for t in rec["trials"])
        if rec["trials"] else "no trials yet"))
    lines.append("stages (upstream first, from dvc.lock):")
    for stage in rec["stages"]:
        lines.append(f"  {stage['stage']}: {stage['cmd']}")
        lines += [f"    param {k} = {json.dumps(v)}" for k, v in stage["params"].items()]
        lines += [f"    in  {d['md5']}  {d['path']}" for d in stage["deps"]]
        lines += [f"    out {o['md5']}  {o['path']}" for o in stage["outs"]]
    lines += [f"warning: {w}" for w in rec["warnings"]]
    return lines


def format_image(rec: dict[str, Any]) -> list[str]:
    lines = [f"image {rec['image_id']}: {rec['path']} in {rec['file']}"]
    lines += [f"  {k}: {rec[k]}" for k in ("subset", "alphabet", "character", "character_id",
                                           "drawer", "sha256", "role") if k in rec]
    if rec.get("pairs_by_role") is not None:
        pairs = rec["pairs_by_role"]
        lines.append(f"  training pairs using it: {pairs.get('train', 0)}"
                     f" (validation pairs: {pairs.get('valid', 0)})")
    trials = rec["trials"]
    if trials is None:
        lines.append("  trials: no trials built yet")
    else:
        lines.append(f"  trials using it: {len(trials)}")
        lines += [f"    {trial_kind(t)} trial {t['trial_id']} ({t['as']})"
                  for t in trials]
    return lines


def lineage(target: str, root: Path | None = None) -> dict[str, Any]:
    """The lineage record of `target`: an image id (digits) or an output path."""
    root = (root or Path.cwd()).resolve()
    if target.strip().isdigit():
        return image_lineage(root, int(target))
    return artifact_lineage(root, target)


def emit(record: dict[str, Any], lines: Callable[[dict[str, Any]], list[str]], as_json: bool,
         out: TextIO | None) -> None:
    """Print a lineage record: as JSON, or as the lines that `lines` makes of it."""
    out = out or sys.stdout
    text = json.dumps(record, indent=2, default=str) if as_json else "\n".join(lines(record))
    out.write(text + "\n")


def run(target: str, as_json: bool = False, out: TextIO | None = None) -> dict[str, Any]:
    """`siamese lineage TARGET [--json]`: print the lineage of `target` and return it."""
    record = lineage(target)
    emit(record, format_image if "image_id" in record else format_artifact, as_json, out)
    return record
