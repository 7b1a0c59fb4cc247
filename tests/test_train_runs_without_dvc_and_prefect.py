import json
import os
import subprocess
import sys
from pathlib import Path

import tasks.train
from siamese import paths, trainlog
from siamese.model import load_model
from tests.training import train_project


def test_without_dvc_dvclive_and_prefect_it_trains_and_logs_json_lines(
        tmp_path, synthetic_data_root, monkeypatch):
    """The GPU machine has torch but neither DVC nor Prefect: training must not need them."""
    for name in ("dvc", "dvclive", "prefect"):
        monkeypatch.setitem(sys.modules, name, None)  # `import name` raises ImportError
    params = train_project(tmp_path, synthetic_data_root, steps=6, eval_every=3,
                           episode_alphabets=2, episode_characters=4)
    monkeypatch.chdir(tmp_path)
    tasks.train.run(params, device="cpu")
    lines = [json.loads(line) for line in trainlog.JSON_LOG.read_text().splitlines()]
    assert [e["step"] for e in lines if "valid_accuracy" in e] == [3, 6]
    summary = json.loads((paths.TRAIN_LIVE / "metrics.json").read_text())
    assert summary["step"] == 6 and 0 <= summary["best_valid_accuracy"] <= 1
    assert trainlog.CURVES.stat().st_size > 0
    assert load_model(paths.MODEL, "cpu")[1]["step"] in (3, 6)


def test_importing_train_and_evaluate_imports_no_yaml_tqdm_or_matplotlib():
    """Those are imported where they are used (loading params, the progress bar, drawing)."""
    blocked = ("yaml", "tqdm", "matplotlib", "dvc", "dvclive", "prefect")
    code = (f"import sys; sys.modules.update(dict.fromkeys({blocked!r}))\n"
            "import tasks.train, tasks.evaluate")
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stderr


def test_without_tqdm_and_matplotlib_it_trains_with_no_bar_and_no_picture(
        tmp_path, synthetic_data_root, monkeypatch, capsys):
    """The GPU machine has neither: the bar shows nothing and the curves are not drawn."""
    for name in ("tqdm", "matplotlib"):
        monkeypatch.setitem(sys.modules, name, None)
    params = train_project(tmp_path, synthetic_data_root, steps=4, eval_every=2,
                           episode_alphabets=2, episode_characters=4)
    monkeypatch.chdir(tmp_path)
    tasks.train.run(params, device="cpu")
    assert load_model(paths.MODEL, "cpu")[1]["step"] in (2, 4)
    assert not trainlog.CURVES.exists()
    assert "matplotlib is not installed: curves.png not drawn" in capsys.readouterr().err
