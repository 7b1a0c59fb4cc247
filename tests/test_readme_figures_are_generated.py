"""The README's figures that a run changes come from the run's files, never typed by hand."""

import pytest

from siamese.errors import PipelineError
from tests import REPO
from tools import readme


def test_the_committed_readme_holds_what_the_committed_results_give():
    text = (REPO / readme.README).read_text()
    assert readme.rewrite(text, REPO) == text, "run `siamese readme` and commit README.md"


def test_the_results_block_reads_metrics_and_the_lock():
    block = readme.results(REPO)
    assert "| Lake's 20 official runs |" in block and "`models/model.pt` md5 `" in block


def test_a_readme_without_its_markers_is_one_clear_error():
    with pytest.raises(PipelineError, match="no generated block"):
        readme.rewrite("# a README\n", REPO)


def test_the_readme_stays_the_front_door():
    assert len((REPO / readme.README).read_text().splitlines()) <= 250
