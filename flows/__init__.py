"""Prefect flows that drive the DVC stages of dvc.yaml.

Importing this package sets offline defaults for Prefect before any flow module imports it:
no server needed (Prefect starts a temporary one per process, its database under
PREFECT_HOME, `.prefect/` in the repository by default), no analytics, and a start-up
timeout that busy machines meet. A variable the user has set is left as it is.
"""

import os
from pathlib import Path

PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "DVC_NO_ANALYTICS": "1",
}


def set_prefect_defaults(root: Path | None = None) -> None:
    """Set the offline defaults in os.environ where unset; PREFECT_HOME is `<root>/.prefect`."""
    os.environ.setdefault("PREFECT_HOME", str((root or Path.cwd()).resolve() / ".prefect"))
    for name, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)


set_prefect_defaults()
