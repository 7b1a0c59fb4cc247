"""Where a result comes from: the git revision, the parameters' digest and the data set's
fingerprint of a checkout. Read by `siamese lineage` and recorded by every flow run."""

import hashlib
import json
import subprocess
from pathlib import Path

import yaml

from siamese import paths
from siamese.errors import PipelineError


def git_revision(root: Path) -> tuple[str, bool]:
    """(HEAD's commit, whether tracked files differ from it); ("unknown", False) outside git."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        if done.returncode != 0:
            raise OSError(done.stderr.strip())
        return done.stdout.strip()

    try:
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except OSError:
        return "unknown", False


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
