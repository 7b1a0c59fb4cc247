"""DVC and the Prefect flow when everything is cached: a no-op `dvc repro`, a cached
`siamese run` against Prefect's own start, and the size of the DVC cache."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from siamese.errors import PipelineError
from tools.bench.timing import child_env, ratio, run_child

# The stages whose outputs (with their upstream stages': fetch, index, split) bench reads.
DATA_TARGETS = ("pairs", "trials")


def dvc_clean(env: dict[str, str], *targets: str) -> str | None:
    """None when `dvc status` finds the targets (with their upstream stages) up to date, else
    why not: a no-op repro is only timed when it cannot run a stage."""
    dvc = [sys.executable, "-m", "dvc"]
    proc = subprocess.run([*dvc, "status", "--json", "--with-deps", *targets], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return f"dvc status failed: {proc.stderr.strip()[-300:]}"
    text = proc.stdout.strip()
    if text not in ("{}", ""):
        changed = ", ".join(sorted(json.loads(text)))
        return f"not up to date ({changed}); run `dvc repro` first"
    return None


def bench_dvc_noop() -> dict[str, Any]:
    """A no-op `dvc repro`: of the whole pipeline when it is all up to date, else of the data
    stages (`dvc repro pairs trials`) when they are; never a repro that would run a stage."""
    env = child_env()
    targets: list[str] = []
    why = dvc_clean(env)
    if why:
        targets = list(DATA_TARGETS)
        if dvc_clean(env, *targets):
            return {"skipped": why}
    try:
        entry = run_child([sys.executable, "-m", "dvc", "repro", *targets], Path("."), env)
    except PipelineError as e:  # e.g. another dvc process holds the lock
        return {"skipped": str(e)[-300:]}
    return {"targets": " ".join(targets) or "all stages", **entry,
            **({"whole_pipeline": why} if why else {})}


def bench_pipeline(stages: int, noop: dict[str, Any]) -> dict[str, Any]:
    """A fully cached `siamese run` (one Prefect task per stage) against Prefect's own start
    (an empty flow run in a process of its own, on the same temporary server) and against the
    no-op `dvc repro` of the whole pipeline (bench_dvc_noop)."""
    if noop.get("targets") != "all stages":
        return {"skipped": noop.get("whole_pipeline") or noop.get("skipped", "")}
    empty = "from prefect import flow\nflow(name='empty')(lambda: None)()"
    try:
        start = run_child([sys.executable, "-c", empty], Path("."), child_env())
        flow = run_child([sys.executable, "-m", "tools.cli", "run"], Path("."), child_env())
    except PipelineError as e:
        return {"skipped": str(e)[-300:]}
    return {
        "stages": stages, "dvc_repro_noop_s": noop["seconds"], "cached_flow_s": flow["seconds"],
        "prefect_empty_flow_s": start["seconds"], "flow_peak_rss_mib": flow["peak_rss_mib"],
        "overhead_per_stage_s": round((flow["seconds"] - start["seconds"]) / stages, 2),
        "flow_over_dvc_noop": ratio(flow["seconds"], noop["seconds"]),
    }


def count_stages() -> int:
    import yaml

    return len(yaml.safe_load(Path("dvc.yaml").read_text())["stages"])


def dvc_cache_size() -> dict[str, Any]:
    """Files and bytes held by the project's DVC cache (.dvc/cache)."""
    files = [p for p in Path(".dvc/cache").rglob("*") if p.is_file()]
    return {"files": len(files), "mib": round(sum(p.stat().st_size for p in files) / 2**20, 1)}
