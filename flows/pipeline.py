"""The pipeline as a Prefect flow: one task run per stage of dvc.yaml, in DVC's order.

The stages and their order come from DVC's own graph of dvc.yaml, and DVC alone decides
whether a stage is up to date (dvc.lock is the one lock file, the DVC cache the one cache): a
flow run after `dvc repro` skips what `dvc repro` built, and the other way round. The flow
asks DVC once, in this process, which stages have changed (`dvc status`); a stage DVC found up
to date, with nothing upstream of it run since, ends its task at once, and every other stage
runs `dvc repro --single-item <stage>` in a process of its own, whose output is the task's log.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Failed, State
from prefect.tasks import exponential_backoff

from flows import remote
from siamese import paths
from siamese.errors import PipelineError
from tools.lineage import dataset_fingerprint, git_revision, params_digest

FLOW_NAME = "omniglot-pipeline"
# Stages whose faults can pass (a download): (retries, first delay in seconds; it doubles).
RETRIES = {"fetch": (2, 10.0)}
TAIL_LINES = 40
OUTCOMES = (
    (re.compile(r"^Running stage '(?P<stage>[^']+)'"), "ran"),
    (re.compile(r"^Stage '(?P<stage>[^']+)' is cached - skipping run"), "restored"),
    (re.compile(r"^(Stage )?'(?P<stage>[^']+)' didn't change, skipping"), "up to date"),
)


def pipeline_stages(root: Path) -> list[str]:
    """The stages of dvc.yaml in an order that runs each after the stages it depends on.

    Among stages free to run, the order of dvc.yaml decides, so the order is stable.
    """
    import networkx as nx
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    try:
        with Repo(str(root)) as repo, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # DVC's own, about its trie
            index = repo.index
            position = {stage: i for i, stage in enumerate(index.stages)}
            # DVC's graph points from a stage to the stages it depends on.
            upstream_first = index.graph.reverse(copy=False)
            ordered = nx.lexicographical_topological_sort(upstream_first, key=position.get)
            return [address(s, repo.root_dir) for s in ordered if isinstance(s, PipelineStage)]
    except DvcException as e:
        raise PipelineError(f"{root / 'dvc.yaml'}: DVC cannot read the pipeline: {e}") from None


def changed_stages(root: Path) -> set[str] | None:
    """The stages whose status DVC reports (changed deps, params, code or outputs), asked once
    in this process under DVC's repository lock; None when DVC cannot tell (the lock held by
    another DVC process, say): then every stage asks `dvc repro`, which reports the problem."""
    from dvc.stage import PipelineStage

    try:
        with remote.locked_repo(root) as repo, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return {address(stage, repo.root_dir) for stage in repo.index.stages
                    if isinstance(stage, PipelineStage) and stage.status()}
    except PipelineError:
        return None


def address(stage: Any, root_dir: str) -> str:
    """How `dvc repro`, run in the repository root, names `stage`."""
    dvcfile = os.path.relpath(stage.dvcfile.path, root_dir)
    return stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}"


def dvc_env() -> dict[str, str]:
    """The environment for DVC and the stage commands: this interpreter's bin first on PATH
    (dvc.yaml calls `siamese`), and unbuffered Python so that output streams line by line."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def stream_command(args: list[str], cwd: Path) -> Iterator[str]:
    """Run `args` in `cwd`, yield its output (stdout and stderr) line by line; the
    generator's return value is the exit status."""
    with subprocess.Popen(
        args, cwd=cwd, env=dvc_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, bufsize=1, errors="replace",
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            yield line.rstrip("\n")
        return proc.wait()


def run_logged(args: list[str], cwd: Path, logger: Any) -> tuple[int, list[str]]:
    """Run `args`, logging each output line; return the exit status and all the lines."""
    lines: list[str] = []
    output = stream_command(args, cwd)
    while True:
        try:
            line = next(output)
        except StopIteration as done:
            return done.value, lines
        logger.info(line)
        lines.append(line)


def stage_outcome(stage: str, lines: list[str]) -> str:
    """What DVC did with `stage`, read from its output: ran, restored or up to date."""
    for line in lines:
        for pattern, outcome in OUTCOMES:
            match = pattern.match(line.strip())
            if match and match["stage"] == stage:
                return outcome
    return "unknown"


@task(name="dvc-stage", task_run_name="{stage}")
def run_stage(stage: str, root: str, force: bool = False,
              up_to_date: bool = False) -> dict[str, Any] | State:
    """Reproduce one stage with `dvc repro --single-item`; its output is this task's log.

    `up_to_date`: the flow's `dvc status` found nothing changed here, so no process starts.
    A failed stage ends the task in a Failed state whose message holds the last lines of the
    output (retried where RETRIES says so): the failure is the stage's, not a Python error,
    so no traceback."""
    logger = get_run_logger()
    if up_to_date:
        logger.info(f"Stage '{stage}' didn't change (dvc status), skipping")
        return {"stage": stage, "outcome": "up to date", "seconds": 0.0}
    args = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    if force:
        args.append("--force")
    start = time.monotonic()
    status, lines = run_logged(args, Path(root), logger)
    seconds = round(time.monotonic() - start, 2)
    if status != 0:
        tail = "\n".join(lines[-TAIL_LINES:])
        return Failed(message=(
            f"stage '{stage}' failed (dvc repro exit status {status}); earlier stages' outputs "
            f"are intact, its own last good outputs are in the DVC cache (`dvc checkout {stage}`)."
            f" Its last lines:\n{tail}"
        ))
    return {"stage": stage, "outcome": stage_outcome(stage, lines), "seconds": seconds}


def stage_task(stage: str):
    """`run_stage`, with retries and back-off for the stages whose faults can pass."""
    if stage not in RETRIES:
        return run_stage
    retries, delay = RETRIES[stage]
    return run_stage.with_options(
        retries=retries, retry_delay_seconds=exponential_backoff(delay), retry_jitter_factor=0.2
    )


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


@task(name="dvc-pull", task_run_name="dvc-pull")
def pull_task(root: str) -> list[str]:
    """Restore what the default DVC remote holds (nothing without one); the outputs it lacks."""
    return remote.pull(root)


@task(name="dvc-push", task_run_name="dvc-push")
def push_task(root: str) -> int:
    """Push the outputs and the run cache to the default DVC remote (nothing without one)."""
    return remote.push(root)


@flow(name=FLOW_NAME, log_prints=True)
def pipeline_flow(repo: str = ".", force: bool = False, push: bool = False) -> list[dict[str, Any]]:
    """Pull from the default DVC remote, run every stage of dvc.yaml as its own task, upstream
    first (stop at the first failure), then push if `push`."""
    root = Path(repo).resolve()
    results: list[dict[str, Any]] = []
    try:
        action = "dvc pull" + (" and push" if push else "")
        with_remote = remote.configured(root, action) is not None
        if with_remote:
            pull_task(str(root))
        stages = pipeline_stages(root)
        changed = set(stages) if force else changed_stages(root)
        for stage in stages:
            # Once a stage has run, DVC itself judges the stages after it.
            known_fresh = changed is not None and stage not in changed and all(
                r["outcome"] == "up to date" for r in results)
            state = stage_task(stage)(stage, str(root), force, up_to_date=known_fresh,
                                      return_state=True)
            if state.is_failed():
                return Failed(message=state.message)  # the later stages do not run
            results.append(state.result())
        if push and with_remote:
            push_task(str(root))
    finally:
        try:
            publish_artifacts(root, results)
        except Exception as e:  # never hide the stage's own failure behind a report's
            get_run_logger().warning(f"flow artifacts not written: {e}")
    return results


def summary(results: list[dict[str, Any]], seconds: float) -> str:
    width = max([len(r["stage"]) for r in results] + [5])
    lines = [f"{'stage':<{width}}  {'outcome':<10}  seconds"]
    lines += [f"{r['stage']:<{width}}  {r['outcome']:<10}  {r['seconds']:7.2f}" for r in results]
    counts = Counter(r["outcome"] for r in results)
    tally = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
    lines.append(f"{len(results)} stages: {tally}; flow {seconds:.1f} s")
    return "\n".join(lines)


def check_api() -> None:
    """With PREFECT_API_URL set, fail early and clearly when that server does not answer."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        return
    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        raise PipelineError(
            f"PREFECT_API_URL={url}: the Prefect server does not answer ({type(error).__name__}: "
            f"{error}). Start it (`prefect server start`), fix the URL, or unset PREFECT_API_URL "
            "to run with a temporary local server."
        )


def run_pipeline(force: bool = False, repo: Path | str = ".",
                 push: bool = False) -> list[dict[str, Any]]:
    """`siamese run`: run the flow, print a per-stage summary, return the stage results."""
    root = Path(repo).resolve()
    if not (root / "dvc.yaml").exists():
        raise PipelineError(f"{root / 'dvc.yaml'}: not found; run from the repository root")
    check_api()
    start = time.monotonic()
    state = pipeline_flow(repo=str(root), force=force, push=push, return_state=True)
    if state.is_failed():
        error = state.result(raise_on_failure=False)
        if isinstance(error, PipelineError):
            raise error
        raise PipelineError(state.message or f"flow run failed: {error}")
    results = state.result()
    print(summary(results, time.monotonic() - start))
    return results


def serve_pipeline(cron: str | None = None, interval: float | None = None,
                   name: str = "omniglot-scheduled", repo: Path | str = ".") -> None:
    """`siamese serve`: serve the flow on a cron or interval schedule until SIGTERM/Ctrl+C.

    Schedules need a Prefect server with its scheduler (the temporary one has none): the one
    at PREFECT_API_URL, or else a local one this command starts and stops (`prefect server
    start`, its database under PREFECT_HOME).
    """
    from prefect.flows import EntrypointType
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    root = Path(repo).resolve()
    if (cron is None) == (interval is None):
        raise PipelineError("serve: give exactly one of --cron or --interval")
    if cron is not None:
        check_cron(cron)
    elif interval <= 0:
        raise PipelineError(f"serve: --interval must be a positive number of seconds: {interval}")
    pipeline_stages(root)  # a broken dvc.yaml fails now, not at the first scheduled run
    # SIGTERM ends this process through `finally` (Prefect's runner takes it over once serving).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    server = nullcontext(get_current_settings().api.url) if get_current_settings().api.url \
        else local_server()
    with server as url, temporary_settings(updates={PREFECT_API_URL: url}):
        check_api()
        pipeline_flow.serve(
            name=name, cron=cron, interval=interval, entrypoint_type=EntrypointType.MODULE_PATH,
            parameters={"repo": str(root), "force": False}, limit=1,  # one run at a time
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def local_server(timeout: float = 120.0) -> Iterator[str]:
    """Start `prefect server start` on a free local port, yield its API URL, stop it after."""
    import urllib.request

    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    log_path = Path(os.environ.get("PREFECT_HOME", ".prefect")) / "server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"starting a local Prefect server for the schedule: {url} (log: {log_path})")
    with open(log_path, "ab") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    message = f"the local Prefect server did not start; see {log_path}"
                    raise PipelineError(message) from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def check_cron(cron: str) -> None:
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron)
    except ValidationError as e:  # pydantic's message is long; the reason is enough
        reason = "; ".join(err["msg"] for err in e.errors())
        raise PipelineError(f"serve: --cron {cron!r} is not a valid cron schedule: {reason}") from e
