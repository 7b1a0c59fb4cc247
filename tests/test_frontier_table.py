"""`siamese frontier`: the run times it reads and the table it writes (the DVC side runs in the
sweep test's experiments)."""

import pytest

from siamese.errors import PipelineError
from tools import frontier

ROW = {"experiment": "a", "train.width": 64.0, "train.image_size": 28.0, "train.rotations": 4.0,
       "train.head": "koch", "train.steps": 1000.0, "train.seed": 4.0,
       "split.holdout_alphabets": 5.0, "cpu_minutes": 6.1, "holdout.20-way.accuracy": 0.7338,
       "holdout.5-way.accuracy": 0.909, "evaluation.20-way.accuracy": 0.775,
       "lake.20-way.accuracy": 0.9025}


def test_times_are_name_tab_cpu_seconds(tmp_path):
    path = tmp_path / "times.tsv"
    path.write_text("a\t366.5\nb\t12\n")
    assert frontier.read_times(path) == {"a": 366.5, "b": 12.0}
    path.write_text("a 366.5\n")
    with pytest.raises(PipelineError, match=r"times.tsv:1: expected name<TAB>cpu_seconds"):
        frontier.read_times(path)
    with pytest.raises(PipelineError, match="cannot read the run times"):
        frontier.read_times(tmp_path / "none.tsv")


def test_the_table_shows_the_holdout_choice_beside_the_test_columns():
    table = frontier.markdown([ROW])
    row = "| width 64, 28 px, rotations 4, koch | 1000 | 4 | 6.1 | **73.4** | 90.9 | 77.5 | 90.2 |"
    assert row in table


def test_seeds_of_one_setting_get_a_row_of_means():
    other = {**ROW, "train.seed": 5.0, "holdout.20-way.accuracy": 0.7538}
    table = frontier.markdown([ROW, other])
    assert "| width 64, 28 px, rotations 4, koch | 1000 | mean ± sd of 2 | | **74.4 ± 1.4** |" \
        in table


def test_the_picture_is_drawn(tmp_path):
    frontier.draw([ROW, {**ROW, "train.steps": 3000.0, "cpu_minutes": 18.0}], tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
