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
import signal
import sys
import time
import urllib.request
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml
from prefect import flow, get_run_logger, task
from prefect.states import Completed, Failed, State
from prefect.tasks import exponential_backoff

from flows import remote
from flows import verify as verification
from flows.dvcstages import (
    RUNNING,
    dvc,
    forward_signals,
    kill_group,
    pipeline_stages,
    read_pipeline,
    run_logged,
    stage_outcome,
)
from flows.guard import WAIT_S, checkout_slot
from flows.report import publish_artifacts
from flows.server import check_api, schedule_server, watch_server
from flows.summary import RunRecord, run_label, state_name
from siamese import paths
from siamese.config import check_params
from siamese.errors import PipelineError
from siamese.provenance import git_revision

FLOW_NAME = "omniglot-pipeline"
# Stages whose faults can pass (a download): (retries, first delay in seconds; it doubles).
RETRIES = {"fetch": (2, 10.0)}
TAIL_LINES = 40
RUN_LIMIT = "the flow's timeout_s"


@dataclass(frozen=True)
class TimeLimits:
    """The run's time limits, counted from when it holds the checkout: each stage's own
    (`stage_s`) and the whole run's (`run_s`), which bounds each stage by the time left to the
    run, so that a run over its time ends in its current stage, killed like a stage over its
    own time. 0: no limit. (Prefect's own flow timeout is fixed when the flow is declared,
    not a parameter of a run.)"""

    stage_s: float = 0
    run_s: float = 0
    start: float = field(default_factory=time.monotonic)

    def for_stage(self) -> tuple[float, str]:
        """The next stage's limit in seconds (0: none; never 0 once the run's time is up),
        and what sets it, as its failure will say."""
        left = self.run_s - (time.monotonic() - self.start)
        if self.run_s and (not self.stage_s or left < self.stage_s):
            return max(round(left, 1), 0.1), f"{RUN_LIMIT}: {self.run_s:g} s in all"
        return self.stage_s, "the flow's stage_timeout_s"


@task(name="dvc-stage", task_run_name="{stage}")
def run_stage(stage: str, root: str, force: bool = False, up_to_date: bool = False,
              limits: TimeLimits = TimeLimits()) -> State:
    """Reproduce one stage with `dvc repro --single-item`; its output is this task's log.

    The task's state is named by the stage's outcome ("Ran", "Up to date", "Restored"), as
    Prefect's UI shows it; its result is the row {stage, outcome, seconds}.
    `up_to_date`: the flow's `dvc status` found nothing changed here, so no process starts.
    A failed stage ends the task in a Failed state whose message holds the last lines of the
    output (retried where RETRIES says so): the failure is the stage's, not a Python error,
    so no traceback; its data is the row, with the last lines as `tail`. When `limits` run
    out, the stage's processes are killed and the task fails saying which limit it was."""
    logger = get_run_logger()
    if up_to_date:
        logger.info(f"Stage '{stage}' didn't change (dvc status), skipping")
        return stage_state(stage, "up to date", 0.0)
    args = dvc("repro", "--single-item", stage)
    if force:
        args.append("--force")
    timeout_s, limit = limits.for_stage()  # at each try: a retry has less of the run's time
    outcome = stage_outcome(Path(root), stage, force)  # DVC's answer, before it runs
    start = time.monotonic()
    status, lines = run_logged(args, Path(root), logger, timeout_s)
    seconds = round(time.monotonic() - start, 2)
    failed = {"stage": stage, "seconds": seconds, "tail": lines[-TAIL_LINES:]}
    if status is None:
        return Failed(name="Timed out", data=failed | {"outcome": "timed out"}, message=(
            f"stage '{stage}' timed out after {timeout_s:g} s ({limit}) and was killed; earlier "
            "stages' outputs are intact"))
    if status != 0:
        tail = "\n".join(lines[-TAIL_LINES:])
        return Failed(data=failed | {"outcome": "failed"}, message=(
            f"stage '{stage}' failed (dvc repro exit status {status}); earlier stages' outputs "
            f"are intact, its own last good outputs are in the DVC cache (`dvc checkout {stage}`)."
            f" Its last lines:\n{tail}"
        ))
    return stage_state(stage, outcome, seconds)


def stage_state(stage: str, outcome: str, seconds: float) -> State:
    """A finished stage's Completed state, named by its outcome for Prefect's UI."""
    return Completed(name=state_name(outcome),
                     data={"stage": stage, "outcome": outcome, "seconds": seconds})


def stage_task(stage: str):
    """`run_stage`, with retries and back-off for the stages whose faults can pass."""
    if stage not in RETRIES:
        return run_stage
    retries, delay = RETRIES[stage]
    return run_stage.with_options(
        retries=retries, retry_delay_seconds=exponential_backoff(delay), retry_jitter_factor=0.2,
        retry_condition_fn=within_the_run_s_time,
    )


def within_the_run_s_time(_task: Any, _task_run: Any, state: State) -> bool:
    """Retry a stage unless it was the run's own time limit that ended it."""
    return RUN_LIMIT not in (state.message or "")


@task(name="dvc-pull", task_run_name="dvc-pull")
def pull_task(root: str) -> list[str]:
    """Restore what the default DVC remote holds (nothing without one); the outputs it lacks."""
    return remote.pull(root)


@task(name="dvc-push", task_run_name="dvc-push")
def push_task(root: str) -> int:
    """Push the outputs and the run cache to the default DVC remote (nothing without one)."""
    return remote.push(root)


def api_url() -> str:
    """The URL of the server this flow run reports to (a temporary one's too)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    assert context is not None and context.client is not None
    return str(context.client.api_url)


def stop_stages() -> None:
    for group in list(RUNNING):
        kill_group(group, signal.SIGTERM)


def check_project_params(root: Path) -> None:
    """For the project's own pipeline (stages that run `siamese`): every parameter checked
    before DVC touches anything, since DVC removes a stage's outputs before running it."""
    try:
        stages = yaml.safe_load((root / "dvc.yaml").read_text()).get("stages", {})
    except (OSError, yaml.YAMLError, AttributeError):
        return  # DVC itself says what is wrong with dvc.yaml
    if any(str(stage.get("cmd", "")).startswith("siamese ") for stage in stages.values()):
        check_params(root / paths.PARAMS)


def notify_failure(_flow: Any, flow_run: Any, state: State) -> None:
    """A failed or crashed run POSTs its name, id, state and message as JSON to the webhook of
    the run's `notify_url` parameter, else of SIAMESE_NOTIFY_URL (none: nothing is sent)."""
    url = flow_run.parameters.get("notify_url") or os.environ.get("SIAMESE_NOTIFY_URL")
    if not url:
        return
    body = json.dumps({"flow_run": flow_run.name, "id": str(flow_run.id), "state": state.name,
                       "message": state.message}).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10):
            pass
    except OSError as e:
        print(f"notify_url {url}: the failure was not sent: {e}")


@flow(name=FLOW_NAME, log_prints=True, on_failure=[notify_failure],  # type: ignore[list-item]
      on_crashed=[notify_failure])  # type: ignore[list-item]
def pipeline_flow(repo: str = ".", force: bool = False, push: bool = False,
                  stage_timeout_s: float = 0, notify_url: str = "",
                  timeout_s: float = 0, wait_s: float = WAIT_S) -> list[dict[str, Any]] | State:
    """Pull from the default DVC remote, run every stage of dvc.yaml as its own task, upstream
    first (stop at the first failure, recorded as the artifact `omniglot-failure`), then push
    if `push`. `stage_timeout_s` > 0 bounds each stage, `timeout_s` > 0 the whole run (see
    TimeLimits); a failed run is sent to `notify_url` (or SIAMESE_NOTIFY_URL), a webhook.
    Another run holding the checkout is waited for at most `wait_s` seconds (flows/guard.py)."""
    root = Path(repo).resolve()
    forward_signals()  # SIGTERM / Ctrl-C stop the running stage's process group at once
    check_project_params(root)
    with ExitStack() as held:
        try:  # one run at a time in this checkout: a second one waits here, within wait_s
            held.enter_context(checkout_slot(root, wait_s))
        except PipelineError as e:
            return Failed(message=str(e))  # its one line, not a traceback
        with watch_server(api_url(), stop_stages):  # a lost server ends the run
            return run_in_order(root, force, push, TimeLimits(stage_timeout_s, timeout_s))


def run_in_order(root: Path, force: bool, push: bool,
                 limits: TimeLimits) -> list[dict[str, Any]] | State:
    """The flow's body: pull, verify, each stage in DVC's order, push; the artifacts always."""
    record = RunRecord(found=git_revision(root))  # the tree as found, before the stages write
    label_run(root, record.found)
    try:
        action = "dvc pull" + (" and push" if push else "")
        with_remote = remote.configured(root, action) is not None
        if with_remote:
            pull_task(str(root))  # it removes the cache's partial objects first
        else:
            remote.remove_partial_objects(root)
        # Re-hash the outputs; repair each corrupt copy, or remove it for its stage to rebuild.
        print(verification.summary(*verification.verify(root)))
        record.stages, changed = read_pipeline(root, force)
        for stage in record.stages:
            # Once a stage has run, DVC itself judges the stages after it.
            known_fresh = changed is not None and stage not in changed and all(
                r["outcome"] == "up to date" for r in record.results)
            state = stage_task(stage)(stage, str(root), force, up_to_date=known_fresh,
                                      limits=limits, return_state=True)
            if state.is_failed():
                record_failure(record, stage, state)
                return Failed(message=state.message)  # the later stages do not run
            record.results.append(state.result())
        if push and with_remote:
            push_task(str(root))
        record.completed = True
    except BaseException as e:  # recorded for the summary, then raised as it was
        record.fail(str(e) or type(e).__name__)
        raise
    finally:
        label_run(root, record.found)  # again: with the data's fingerprint, once known
        try:
            publish_artifacts(root, record, FLOW_NAME)
        except Exception as e:  # never hide the stage's own failure behind a report's
            get_run_logger().warning(f"flow artifacts not written: {e}")
    return record.results


def record_failure(record: RunRecord, stage: str, state: State) -> None:
    """The failed stage's row (its outcome and seconds) and its last lines, into `record`."""
    message = state.message or f"stage '{stage}' failed"
    row = state.result(raise_on_failure=False)
    if not isinstance(row, dict):  # a failure outside the stage's command: a Python error
        row = {"stage": stage, "outcome": "failed", "seconds": 0.0}
    tail = row.pop("tail", [])
    record.results.append(row)
    record.fail(message, stage, tail)


def label_run(root: Path, found: tuple[str, bool]) -> None:
    """Name and tag this flow run by what it runs (flows/summary.py's run_label), keeping the
    tags it has (a deployment's, a sweep's): as it starts, and as it ends, when the data's
    fingerprint is known."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    name, tags = run_label(root, found)
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, name=name,
                                   tags=sorted(set(flow_run.tags) | set(tags)))
    except Exception as e:  # a label is a convenience: never the reason a run fails
        get_run_logger().warning(f"flow run not named or tagged: {e}")


def summary(results: list[dict[str, Any]], seconds: float) -> str:
    width = max([len(r["stage"]) for r in results] + [5])
    lines = [f"{'stage':<{width}}  {'outcome':<10}  seconds"]
    lines += [f"{r['stage']:<{width}}  {r['outcome']:<10}  {r['seconds']:7.2f}" for r in results]
    counts = Counter(r["outcome"] for r in results)
    tally = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
    lines.append(f"{len(results)} stages: {tally}; flow {seconds:.1f} s")
    return "\n".join(lines)


def run_pipeline(force: bool = False, repo: Path | str = ".", push: bool = False,
                 stage_timeout_s: float = 0, timeout_s: float = 0,
                 wait_s: float = WAIT_S) -> list[dict[str, Any]]:
    """`siamese run`: run the flow, print a per-stage summary, return the stage results."""
    root = Path(repo).resolve()
    if not (root / "dvc.yaml").exists():
        raise PipelineError(f"{root / 'dvc.yaml'}: not found; run from the repository root")
    check_project_params(root)  # before a Prefect server starts, too
    check_api()
    start = time.monotonic()
    state = pipeline_flow(repo=str(root), force=force, push=push,
                          stage_timeout_s=stage_timeout_s, timeout_s=timeout_s,
                          wait_s=wait_s, return_state=True)
    if state.is_failed():
        error = state.result(raise_on_failure=False)
        if isinstance(error, PipelineError):
            raise error
        raise PipelineError(state.message or f"flow run failed: {error}")
    results = cast(list[dict[str, Any]], state.result())  # completed: the stages' results
    print(summary(results, time.monotonic() - start))
    return results


def serve_pipeline(cron: str | None = None, interval: float | None = None,
                   name: str = "omniglot-scheduled", repo: Path | str = ".") -> None:
    """`siamese serve`: serve the flow on a cron or interval schedule until SIGTERM/Ctrl+C.

    Schedules need a Prefect server with its scheduler (the temporary one has none): the one
    at PREFECT_API_URL, or else a local one this command starts as its child and stops, kill
    -9 included (`prefect server start`, its database and log under PREFECT_HOME;
    flows/server.py).
    """
    from prefect.flows import EntrypointType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = Path(repo).resolve()
    if (cron is None) == (interval is None):
        raise PipelineError("serve: give exactly one of --cron or --interval")
    if cron is not None:
        check_cron(cron)
    elif interval is None or interval <= 0:
        raise PipelineError(f"serve: --interval must be a positive number of seconds: {interval}")
    pipeline_stages(root)  # a broken dvc.yaml fails now, not at the first scheduled run
    # SIGTERM ends this process through `finally` (Prefect's runner takes it over once serving).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with schedule_server(root) as url, temporary_settings(updates={PREFECT_API_URL: url}):
        check_api()
        pipeline_flow.serve(
            name=name, cron=cron, interval=interval, entrypoint_type=EntrypointType.MODULE_PATH,
            parameters={"repo": str(root), "force": False}, limit=1,  # one run at a time
        )


def check_cron(cron: str) -> None:
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron)
    except ValidationError as e:  # pydantic's message is long; the reason is enough
        reason = "; ".join(err["msg"] for err in e.errors())
        raise PipelineError(f"serve: --cron {cron!r} is not a valid cron schedule: {reason}") from e
