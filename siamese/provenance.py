"""Where a result comes from: the git revision, the parameters' digest and the data set's
fingerprint of a checkout. Read by `siamese lineage` and recorded by every flow run."""

import hashlib
import json
import subprocess
from pathlib import Path

import yaml

from siamese import paths
from siamese.errors import PipelineError


def git(root: Path, *args: str) -> str:
    """git's output in `root`; OSError with git's message where it fails (outside git)."""
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise OSError(done.stderr.strip())
    return done.stdout


def git_revision(root: Path) -> tuple[str, bool]:
    """(HEAD's commit, whether the checkout is dirty: changed_files); ("unknown", False)
    outside git."""
    try:
        return git(root, "rev-parse", "HEAD").strip(), bool(changed_files(root))
    except OSError:
        return "unknown", False


def changed_files(root: Path) -> list[str]:
    """Tracked files that differ from HEAD, except what the pipeline writes: the code and
    parameters that would make a result differ from the commit's. A run that rebuilt leaves
    dvc.lock and the git-tracked metrics and reports changed; they are its result, not a
    difference in what made it."""
    listed = git(root, "status", "--porcelain", "--untracked-files=no").splitlines()
    written = pipeline_writes(root)
    changed = [line[3:] for line in listed]
    return [p for p in changed if not any(p == w or p.startswith(f"{w}/") for w in written)]


def pipeline_writes(root: Path) -> set[str]:
    """The paths the pipeline itself writes, git-tracked or not: dvc.lock and every output,
    metric and plot of dvc.yaml's stages (just dvc.lock where dvc.yaml cannot be read)."""
    try:
        stages = (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {})
    except (OSError, yaml.YAMLError, AttributeError):
        stages = {}
    written = {"dvc.lock"}
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            written |= {next(iter(o)) if isinstance(o, dict) else o for o in stage.get(kind, [])}
    return written


def params_digest(root: Path) -> str:
    """sha256 of params.yaml in canonical form (sorted keys, compact JSON): comments and
    layout do not change it, any value does."""
    path = root / paths.PARAMS
    try:
        params = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise PipelineError(f"{path}: cannot read the parameters: {e}") from None
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def dataset_fingerprint(root: Path) -> str | None:
    """The content fingerprint of data/manifests/dataset.json, or None before `index` ran."""
    path = root / paths.DATASET
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())["fingerprint"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise PipelineError(f"{path}: not a data set summary with a 'fingerprint'") from None
