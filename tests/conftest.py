import os
from pathlib import Path

import pytest

from tests.synthetic import make_source

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("OMNIGLOT_SHARED", REPO.parent / "shared" / "data" / "omniglot"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real Omniglot zips, read-only (../shared/data/omniglot, or $OMNIGLOT_SHARED)."""
    if not (SHARED_DATA / "SHA256SUMS").exists():
        pytest.fail(f"real Omniglot not found at {SHARED_DATA}; set OMNIGLOT_SHARED")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_source(tmp_path_factory) -> Path:
    """A small synthetic Omniglot source folder (zips + SHA256SUMS), built once per session."""
    return make_source(tmp_path_factory.mktemp("synthetic-omniglot"))
