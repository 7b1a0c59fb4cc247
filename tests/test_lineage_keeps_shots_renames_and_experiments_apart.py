"""Lineage answers past the small cases: k-shot in the trial keys, a renamed dependency seen as
removed and added, an experiment name under two baselines refused with its candidates."""

import subprocess
from pathlib import Path

import pandas as pd
import pytest

from siamese import paths
from siamese.errors import PipelineError
from tools import lineage, revisions


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root,
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


def write_trials(root: Path) -> None:
    rows = [("vinyals", 5, k, i, 7 if i == 0 else 8, [7, 9], 0) for k in (1, 5) for i in range(3)]
    rows += [("valid", 20, 1, 0, 9, [9, 7], 0)]
    frame = pd.DataFrame(rows, columns=["trial_set", "n_way", "k_shot", "trial_id", "query_id",
                                        "candidate_ids", "answer"])
    (root / paths.TRIALS).parent.mkdir(parents=True)
    frame.to_parquet(root / paths.TRIALS)


def test_trials_are_counted_and_listed_per_k_shot(tmp_path):
    write_trials(tmp_path)
    counts = lineage.data_summary(tmp_path)["trials"]
    assert counts == [
        {"trial_set": "valid", "n_way": 20, "k_shot": 1, "trials": 1},
        {"trial_set": "vinyals", "n_way": 5, "k_shot": 1, "trials": 3},
        {"trial_set": "vinyals", "n_way": 5, "k_shot": 5, "trials": 3},
    ]
    assert [lineage.trial_kind(c) for c in counts] == [
        "valid 20-way", "vinyals 5-way", "vinyals 5-way 5-shot"]
    found = lineage.image_trials(tmp_path, 7)
    assert [(t["k_shot"], t["trial_id"], t["as"]) for t in found if t["trial_set"] == "vinyals"] \
        == [(1, 0, "query"), (1, 1, "candidate"), (1, 2, "candidate"),
            (5, 0, "query"), (5, 1, "candidate"), (5, 2, "candidate")]


def test_a_renamed_dependency_is_a_removal_and_an_addition(tmp_path):
    git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "scale.py").write_text("SCALE = 2\n" * 20)
    (tmp_path / "dvc.yaml").write_text("stages:\n  train:\n    cmd: python scale.py\n"
                                       "    deps: [scale.py]\n    outs: [model.txt]\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "a")
    git(tmp_path, "mv", "scale.py", "factor.py")
    (tmp_path / "dvc.yaml").write_text("stages:\n  train:\n    cmd: python factor.py\n"
                                       "    deps: [factor.py]\n    outs: [model.txt]\n")
    git(tmp_path, "commit", "-qam", "b")
    assert revisions.code_changed(tmp_path, "HEAD~1", "HEAD") == [
        {"file": "factor.py", "stages": ["train"]},
        {"file": "scale.py", "stages": ["train"]},
    ]


def test_an_experiment_name_under_two_baselines_is_refused_with_both(tmp_path):
    git(tmp_path, "init", "-q", "-b", "main")
    for n in (1, 2):
        (tmp_path / "f").write_text(str(n))
        git(tmp_path, "add", "-A")
        git(tmp_path, "commit", "-qm", str(n))
    first, second = git(tmp_path, "rev-parse", "HEAD~1"), git(tmp_path, "rev-parse", "HEAD")
    git(tmp_path, "update-ref", "refs/exps/aa/aaaa/lr-small", first)
    assert revisions.resolve(tmp_path, "lr-small") == first
    git(tmp_path, "update-ref", "refs/exps/bb/bbbb/lr-small", second)
    with pytest.raises(PipelineError, match=r"'lr-small': DVC experiments of that name under "
                       r"several baselines \(refs/exps/aa/aaaa/lr-small, "
                       r"refs/exps/bb/bbbb/lr-small\)"):
        revisions.resolve(tmp_path, "lr-small")
    assert revisions.resolve(tmp_path, "refs/exps/bb/bbbb/lr-small") == second
