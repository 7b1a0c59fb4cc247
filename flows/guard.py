"""One flow run at a time per checkout, across every deployment (the nightly pipeline, sweeps):
two runs in one checkout would meet at DVC's lock, and the second would fail there.

It is a Prefect global concurrency limit of one slot, named for the machine and the checkout's
path; a run takes the slot before it touches DVC and a second run waits for it (it queues; it
never fails). Each deployment's own `concurrency_limit` in prefect.yaml queues its own runs.
"""

import hashlib
import socket
from contextlib import AbstractContextManager
from pathlib import Path


def slot_name(root: Path) -> str:
    where = f"{socket.gethostname()}:{root.resolve()}"
    return f"omniglot-checkout-{hashlib.sha256(where.encode()).hexdigest()[:12]}"


def checkout_slot(root: Path) -> AbstractContextManager[None]:
    """The checkout's slot (created with a limit of 1 if the server lacks it), held while the
    `with` block runs; waiting, without a time limit, while another run holds it."""
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency

    name = slot_name(root)
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, 1)
    return concurrency(name, occupy=1, strict=True)
