"""Inputs checked where they are read: under `dvc repro` (DVC sets DVC_STAGE for a stage's
command), an input file that an earlier stage wrote must have the md5 that dvc.lock records
for it. DVC itself trusts a file whose size and mtime it has seen before, so a file scrambled
in place, or restored from a corrupt cache object, would otherwise flow downstream.

Outside a DVC stage (a test, `siamese classify`, a stage run by hand) nothing is checked: the
workspace may rightly differ from dvc.lock there."""

import hashlib
import os
from pathlib import Path

from siamese.errors import PipelineError

LOCK = Path("dvc.lock")  # a stage runs in its wdir, the repository root (dvc.yaml's folder)


def check_input(path: Path) -> None:
    """Refuse `path` in one line when it is not the bytes dvc.lock records for it."""
    if not os.environ.get("DVC_STAGE"):
        return
    recorded = recorded_output(path)
    if recorded is None:
        return
    stage, md5 = recorded
    found = file_md5(path)
    if found != md5:
        raise PipelineError(
            f"{path}: md5 {found} is not the {md5} that dvc.lock records for the {stage} "
            "stage's output, so it changed after that stage wrote it (scrambled in place, or "
            f"restored from a corrupt cache object); `siamese verify` finds and repairs it, "
            f"`dvc repro --force {stage}` rebuilds it"
        )


def recorded_output(path: Path) -> tuple[str, str] | None:
    """(the stage, the md5) that dvc.lock records for the file output `path`; None when it is
    not one (no lock, a folder's member, not an output)."""
    import yaml  # here: the stages' library loads without it where no stage runs (bench/gpu)

    try:
        lock = yaml.safe_load(LOCK.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    wanted = Path(path).as_posix()
    for stage, entry in (lock.get("stages") or {}).items():
        for out in (entry or {}).get("outs") or []:
            md5 = str(out.get("md5", ""))
            if out.get("path") == wanted and md5 and not md5.endswith(".dir"):
                return stage, md5
    return None


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
