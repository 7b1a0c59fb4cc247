"""`siamese lineage IMAGE --reverse`: what depends on one image.

The image (an image_id, its path in the manifest, which is its path inside its zip, or a file
of Lake's runs) is traced forward: the manifests rows that name it (Lake's runs, its role, the
pairs and trials that use it), what that means for the model and the metrics, and the stages
of dvc.yaml that would rerun if its file changed, found by walking the deps of dvc.yaml from
the zip that holds it. Reads only; writes nothing.
"""

from pathlib import Path
from typing import Any, TextIO

import yaml

from siamese import paths
from siamese.errors import PipelineError
from tools.lineage import (
    LOCK,
    covers,
    emit,
    entry_hash,
    file_md5,
    format_image,
    image_lineage,
    load_lock,
    producer,
    read_table,
    resolved,
    trial_kind,
)

MANIFESTS = (paths.IMAGES, paths.LAKE_RUNS, paths.SPLIT, paths.PAIRS, paths.TRIALS)


def image_id_of(root: Path, target: str) -> int:
    """The image_id that `target` names: an id, a manifest path or a run file."""
    if target.strip().isdigit():
        return int(target)
    images = read_table(root, paths.IMAGES, ["image_id", "path"])
    if images is None:
        raise PipelineError(f"{paths.IMAGES}: not found; run the `index` stage first")
    found = images.loc[images["path"] == target, "image_id"]
    if found.empty:
        lake = read_table(root, paths.LAKE_RUNS, ["file", "image_id"])
        found = lake.loc[lake["file"] == target, "image_id"] if lake is not None else found
    if found.empty:
        raise PipelineError(f"{target!r}: not an image of {paths.IMAGES} nor a file of "
                            "Lake's runs; give an image_id or a path like "
                            "images_background/<alphabet>/<character>/<file>.png")
    return int(found.iloc[0])


def stage_outs(stage: dict[str, Any]) -> list[str]:
    return [o if isinstance(o, str) else next(iter(o))
            for key in ("outs", "metrics", "plots") for o in stage.get(key) or []]


def downstream(stages: dict[str, dict[str, Any]], path: str) -> list[str]:
    """The stages that depend on `path`, directly or through other stages' outputs, each after
    the affected stages it depends on."""
    changed, affected = {path}, []
    grew = True
    while grew:
        grew = False
        for name, stage in stages.items():
            if name not in affected and any(covers(dep, p) or covers(p, dep)
                                            for dep in stage.get("deps") or [] for p in changed):
                affected.append(name)
                changed |= set(stage_outs(stage))
                grew = True
    ordered: list[str] = []
    while len(ordered) < len(affected):
        for name in affected:
            waits = [s for s in affected if s not in ordered and s != name and any(
                covers(out, dep) for out in stage_outs(stages[s])
                for dep in stages[name].get("deps") or [])]
            if name not in ordered and not waits:
                ordered.append(name)
    return ordered


def read_pipeline(root: Path) -> dict[str, dict[str, Any]]:
    path = root / "dvc.yaml"
    params = root / paths.PARAMS
    try:
        text = resolved(path.read_text(), params.read_text() if params.exists() else None)
        return (yaml.safe_load(text) or {}).get("stages", {})
    except (OSError, yaml.YAMLError, AttributeError) as e:
        raise PipelineError(f"{path}: cannot read the pipeline ({e})") from None


def uses(record: dict[str, Any]) -> dict[str, str]:
    """How the image enters the model and the metrics, from its role, pairs and trials."""
    role = record.get("role")
    trained = {"train": "trained on it (train role)",
               "valid": "selected on it (valid trials during training), not trained on it"}
    trials = record.get("trials") or []
    sets = sorted({trial_kind(t) for t in trials})
    pairs = (record.get("pairs_by_role") or {}).get("valid", 0)
    scored = ([f"{len(trials)} trials ({', '.join(sets)})"] if trials else []) + \
        ([f"{pairs} verification pairs"] if pairs else [])
    return {
        paths.MODEL.as_posix(): trained.get(str(role), f"never shown it ({role or 'no'} role)"),
        paths.METRICS.as_posix(): "scores it in " + " and ".join(scored) if scored
        else "does not score it",
    }


def check_lock(root: Path) -> None:
    """Each manifest on disk must be what dvc.lock records (when there is one): an edited or
    half-rebuilt manifest would answer for other data."""
    if not (root / LOCK).exists():
        return
    stages = load_lock(root)
    for target in MANIFESTS:
        name = producer(stages, target.as_posix())
        current = file_md5(root / target)
        if name is None or current is None:
            continue
        recorded = next(entry_hash(o) for o in stages[name]["outs"]
                        if o["path"] == target.as_posix())
        if current != recorded:
            raise PipelineError(f"{target}: md5 {current} differs from {recorded} in {LOCK}; "
                                f"edited or not rebuilt? `dvc checkout {name}` or `dvc repro`")


def reverse(target: str, root: Path | None = None) -> dict[str, Any]:
    root = (root or Path.cwd()).resolve()
    check_lock(root)
    record = image_lineage(root, image_id_of(root, target))
    lake = read_table(root, paths.LAKE_RUNS)
    if lake is not None:
        rows = lake[lake["image_id"] == record["image_id"]]
        record["lake_runs"] = [{"run": int(r.run), "kind": r.kind, "position": int(r.position),
                                "file": r.file} for r in rows.itertuples(index=False)]
    stages = read_pipeline(root)
    rerun = downstream(stages, record["file"])
    record["produced_by"] = [s for s, stage in stages.items()
                             if any(covers(out, record["file"]) for out in stage_outs(stage))]
    record["stages_rerun"] = [s for s in rerun if s not in record["produced_by"]]
    record["artifacts"] = [{"path": out, "stage": s} for s in record["stages_rerun"]
                           for out in stage_outs(stages[s])]
    record["uses"] = uses(record)
    return record


def format_reverse(rec: dict[str, Any]) -> list[str]:
    lines = format_image(rec)
    for run in rec.get("lake_runs") or []:
        lines.append(f"  Lake run {run['run']} {run['kind']} {run['position']}: {run['file']}")
    lines += [f"  {path}: {how}" for path, how in rec["uses"].items()]
    lines.append(f"  written by: {', '.join(rec['produced_by']) or 'no stage'}"
                 + (" (`dvc repro` would restore it unless `dvc commit`ed)"
                    if rec["produced_by"] else ""))
    lines.append("  stages that would rerun if it changed: "
                 + (", ".join(rec["stages_rerun"]) or "none"))
    lines.append("  artifacts that depend on it:")
    lines += [f"    {a['path']}  ({a['stage']})" for a in rec["artifacts"]]
    return lines


def run(target: str, as_json: bool = False, out: TextIO | None = None) -> dict[str, Any]:
    """`siamese lineage IMAGE --reverse [--json]`."""
    record = reverse(target)
    emit(record, format_reverse, as_json, out)
    return record
