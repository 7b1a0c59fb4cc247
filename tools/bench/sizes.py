"""How much of each measurement `siamese bench` does: FULL (the default), QUICK and TINY."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    """How much of each measurement to do; FULL, QUICK and TINY below."""

    batch: int  # pairs per batch, both loaders
    project_batches: int  # batches through this project's loader
    seed_batches: int  # batches through the seed's PNG loader
    augment_batches: int
    steps: tuple[tuple[str, int, int, int], ...]  # (arch, image_size, batch, timed steps)
    seed_trials: int  # trials per set scored the seed's way (the project scores them all)
    probe_steps: int = 60  # training steps per CPU setting (tools/bench/probe.py); 0: none
    stages: bool = True  # run the data stages on the real data
    pipeline: bool = True  # no-op `dvc repro` and the cached Prefect flow


FULL = Sizes(batch=128, project_batches=300, seed_batches=20, augment_batches=30,
             steps=(("compact", 28, 128, 10), ("koch", 105, 8, 3)), seed_trials=200)
QUICK = Sizes(batch=128, project_batches=60, seed_batches=5, augment_batches=8,
              steps=(("compact", 28, 128, 5), ("koch", 105, 4, 2)), seed_trials=50,
              probe_steps=20)
TINY = Sizes(batch=16, project_batches=4, seed_batches=2, augment_batches=2,
             steps=(("compact", 28, 16, 1),), seed_trials=5, probe_steps=1, pipeline=False)
