"""The data stages run twice from scratch on the real Omniglot give byte-identical artifacts."""

import pytest

from tasks import paths
from tests.conftest import build_data

ARTIFACTS = (paths.IMAGES, paths.LAKE_RUNS, paths.DATASET, paths.PIXELS, paths.SPLIT,
             paths.PAIRS, paths.TRIALS)


@pytest.mark.slow
def test_second_run_from_scratch_is_byte_identical(real_data_root, shared_data, tmp_path):
    again = build_data(tmp_path / "again", shared_data, None)
    for artifact in ARTIFACTS:
        first, second = (real_data_root / artifact).read_bytes(), (again / artifact).read_bytes()
        assert first == second, f"{artifact} differs between two runs"
