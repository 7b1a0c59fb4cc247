"""`siamese frontier` on real DVC experiments (issue 29, item 10): seeds saved under two
baselines under the same names are not averaged together; a name resolves as `dvc exp apply`
resolves it (the experiment of HEAD's baseline), experiments of earlier baselines are still
read, and a name that is ambiguous from HEAD is a one-line error that names the full refs."""

import json
import shutil
from pathlib import Path

import pytest

from siamese.errors import PipelineError
from tests.flowkit import git_commit_all, init_repo, run
from tools import frontier

PARAMS = """train: {{width: 64, image_size: 40, rotations: 4, head: koch, steps: 2000,
        seed: {seed}}}
split: {{holdout_alphabets: 0}}
"""


def write_result(root: Path, seed: int, accuracy: float) -> None:
    """params.yaml with train.seed `seed`, metrics.json with every accuracy `accuracy`."""
    (root / "params.yaml").write_text(PARAMS.format(seed=seed))
    metrics = {trials: {way: {"accuracy": accuracy} for way in ("20-way", "5-way")}
               for trials in ("holdout", "evaluation", "lake")}
    (root / "metrics.json").write_text(json.dumps(metrics))


def save_experiment(root: Path, name: str, seed: int, accuracy: float) -> None:
    """`dvc exp save -n NAME` of such a result (no stage runs)."""
    write_result(root, seed, accuracy)
    run(["dvc", "exp", "save", "-q", "-n", name], root)


@pytest.fixture(scope="module")
def two_baselines(tmp_path_factory) -> Path:
    """Seeds 4 and 5 saved from commit A (at 70% and 72%) and again from commit B (88%, 90%),
    and `early` from A only; HEAD at B. Read-only: copy it to change it."""
    root = tmp_path_factory.mktemp("frontier") / "repo"
    root.mkdir()
    init_repo(root)
    for key, value in (("user.name", "t"), ("user.email", "t@t")):
        run(["git", "config", key, value], root)
    (root / "dvc.yaml").write_text("metrics:\n  - metrics.json\n")
    write_result(root, 4, 0.5)
    git_commit_all(root, "A")
    for name, seed, accuracy in (("seed4", 4, 0.70), ("seed5", 5, 0.72), ("early", 6, 0.60)):
        save_experiment(root, name, seed, accuracy)
    (root / "kernels.txt").write_text("other kernels\n")
    git_commit_all(root, "B: the same setting, other kernels")
    for name, seed, accuracy in (("seed4", 4, 0.88), ("seed5", 5, 0.90)):
        save_experiment(root, name, seed, accuracy)
    return root


def test_seeds_retrained_under_another_baseline_are_read_from_heads_only(two_baselines):
    rows = frontier.experiment_rows(two_baselines, {"seed4": 60.0, "seed5": 60.0})
    assert [(r["experiment"], r["train.seed"], r["holdout.20-way.accuracy"]) for r in rows] == [
        ("seed4", 4.0, 0.88), ("seed5", 5.0, 0.90)]
    assert "| mean ± sd of 2 | | **89.0 ± 1.4** |" in frontier.markdown(rows)


def test_an_experiment_of_an_earlier_baseline_is_read_too(two_baselines):
    [row] = frontier.experiment_rows(two_baselines, {"early": 60.0})
    assert (row["train.seed"], row["holdout.20-way.accuracy"]) == (6.0, 0.60)


def test_a_name_ambiguous_from_head_is_one_line_naming_the_refs_and_a_ref_picks_one(
        two_baselines, tmp_path):
    repo = Path(shutil.copytree(two_baselines, tmp_path / "repo", symlinks=True))
    run(["git", "commit", "-q", "--allow-empty", "-m", "C"], repo)
    with pytest.raises(PipelineError) as raised:
        frontier.experiment_rows(repo, {"seed4": 60.0})
    message = str(raised.value)
    assert "\n" not in message and "Ambiguous name 'seed4'" in message
    refs = [word for word in message.split() if word.startswith("refs/exps/")]
    assert len(refs) == 2
    rows = frontier.experiment_rows(repo, dict.fromkeys(refs, 60.0))
    assert sorted(r["holdout.20-way.accuracy"] for r in rows) == [0.70, 0.88]
    assert {r["experiment"] for r in rows} == {"seed4"}
