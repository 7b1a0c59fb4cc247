"""The pull step of prefect.yaml's deployments: enter this worker's own checkout of the project.

`prefect deploy` fills `{{ $VAR }}` in prefect.yaml from the deployer's environment, so a
`set_working_directory` step would send the deployer's folder to every worker. This step is
a function instead: Prefect calls it in the flow-run process when a run starts, and a process
worker starts that process with its own environment, so SIAMESE_REPO is the worker's.
"""

import os
import subprocess
from pathlib import Path

from siamese.errors import PipelineError
from siamese.provenance import changed_files

VARIABLE = "SIAMESE_REPO"


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise PipelineError(f"{VARIABLE}={root}: not a git checkout of the project "
                            f"({done.stderr.strip().splitlines()[-1]})")
    return done.stdout


def checked_checkout(variable: str) -> Path:
    """The folder $variable names, once it is known to be a clean git checkout of the project."""
    value = os.environ.get(variable, "")
    if not value:
        raise PipelineError(f"{variable} is not set in the worker's environment: start it as "
                            f"`{variable}=/path/to/checkout prefect worker start --pool omniglot`")
    root = Path(value).expanduser().resolve()
    if not (root / "dvc.yaml").is_file():
        raise PipelineError(f"{variable}={value}: no checkout of the project there (no dvc.yaml)")
    if Path(git(root, "rev-parse", "--show-toplevel").strip()).resolve() != root:
        raise PipelineError(f"{variable}={value}: not the root of a git checkout")
    changed = changed_files(root)
    if changed:
        shown = ", ".join(changed[:3]) + (", ..." if len(changed) > 3 else "")
        raise PipelineError(f"{variable}={value}: the checkout has uncommitted changes to tracked "
                            f"files ({shown}); commit or stash them, runs use committed code")
    return root


def fail_flow_run(message: str) -> None:
    """Fail the flow run with `message`: a pull step's exception reaches only the worker's
    output, and the run's state would say just that its process exited with status 1."""
    flow_run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    if not flow_run_id:
        return
    from prefect.client.orchestration import get_client
    from prefect.states import Failed

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Failed(message=message), force=True)


def enter_checkout(variable: str = VARIABLE) -> dict[str, str]:
    """The pull step: enter the clean git checkout of the project that $variable names; else
    fail the flow run saying why."""
    try:
        root = checked_checkout(variable)
    except PipelineError as e:
        fail_flow_run(str(e))
        raise
    os.chdir(root)
    return {"directory": str(root)}
