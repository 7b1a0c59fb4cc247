import os
import subprocess
import sys

from siamese.model import load_model
from tests.training import train_project


def test_two_process_torchrun_on_cpu_trains_and_writes_a_checkpoint(tmp_path,
                                                                    synthetic_data_root):
    train_project(tmp_path, synthetic_data_root, steps=6, eval_every=3, episode_alphabets=2,
                  episode_characters=4)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "tools.cli", "train", "--device", "cpu"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    model, meta = load_model(tmp_path / "models/model.pt", "cpu")
    assert meta["step"] in (3, 6)
    assert (tmp_path / "models/checkpoints/last.pt").exists()
    assert (tmp_path / "reports/train/metrics.json").exists()
