"""`siamese bench` and the GPU script, run on tiny sizes so that neither can rot.

The figures themselves are not checked (a shared CI machine gives any numbers); what is
checked: every section runs through the project's real code, the seed baselines compute the
same things as the project's paths, and the reports hold the promised keys.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from siamese import cpu
from siamese.errors import PipelineError
from tests import REPO
from tests.stagekit import build_data
from tests.synthetic import Layout, make_source
from tools.bench import suite
from tools.bench.sizes import TINY
from tools.bench.trainparts import pair_flops

pytestmark = pytest.mark.slow  # the whole bench on a built data folder: not in `make check`


# Alphabets of 21 characters: enough for the 20-way validation trials that train.py needs.
LAYOUT = Layout(background=(("Alpha", 21), ("Beta", 21)), evaluation=(("Delta", 21),), runs=1)
EDITS = {
    "index": {"expected_fingerprint": None, "expected_runs_fingerprint": None},
    "pairs": {"train_count": 200, "valid_count": 100},
    "trials": {"n_way": [20], "per_alphabet": 2, "holdout_per_alphabet": 2},
}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return make_source(tmp_path_factory.mktemp("bench-source"), LAYOUT)


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory, source) -> tuple[dict, Path]:
    root = build_data(tmp_path_factory.mktemp("bench-project"), source, EDITS)
    here, saved = Path.cwd(), dict(os.environ)
    os.chdir(root)
    os.environ.update(cpu.PATHS["avx2"])  # as `siamese bench` pins its own process
    try:
        return suite.run(sizes=TINY), root
    finally:
        os.chdir(here)
        os.environ.clear()
        os.environ.update(saved)


def test_bench_runs_every_section_and_writes_reports(tiny_bench):
    r, root = tiny_bench
    saved = json.loads((root / "reports/bench.json").read_text())
    assert saved["input_path_speedup"] == r["input_path_speedup"] > 0
    assert saved["eval_speedup"] == r["eval_speedup"] > 0
    assert "| input path |" in (root / "reports/bench.md").read_text()
    stages = r["data_stages"]
    for stage in ("index", "split", "pairs", "trials"):
        assert stages[stage]["seconds"] > 0 and stages[stage]["peak_rss_mib"] > 10
    assert stages["index"]["images"] == stages["index: pack+write"]["images"] > 0
    assert set(r["train_step"]) == {"threads", "compact at 28", "profile"}
    assert r["train_step"]["profile"]["images_per_s"] > 0


def test_bench_runs_the_step_under_each_cpu_setting_in_its_own_process(tiny_bench):
    settings = tiny_bench[0]["cpu_settings"]
    native, pinned = settings["native, tuned allocator"], settings["avx2, tuned allocator"]
    assert native["settings"] == {name: "" for name in cpu.SETTINGS}  # not the parent's pins
    assert pinned["settings"] == cpu.PATHS["avx2"]
    for paths in ("native", "avx2"):  # the allocator changes no weight
        assert (settings[f"{paths}, default allocator"]["weights_sha256"]
                == settings[f"{paths}, tuned allocator"]["weights_sha256"])
    assert "| cpu settings |" in (tiny_bench[1] / "reports/bench.md").read_text()


def test_bench_baselines_compute_what_the_project_computes(tiny_bench):
    r, _ = tiny_bench
    # The seed's PNG path and the project's packed path deliver identical tensors ...
    assert r["input_path"]["same_tensors_at_105"] is True
    # ... and tiling the query through the twin predicts what embedding once predicts.
    scored = [e for e in r["evaluation"].values() if isinstance(e, dict)]
    assert scored and all(e["same_predictions"] for e in scored)
    assert all(e["seed_passes_per_trial"] == 2 * int(k.split()[1].split("-")[0])
               for k, e in r["evaluation"].items() if isinstance(e, dict))


def test_missing_inputs_name_a_repro_that_builds_pairs_and_trials(tmp_path, monkeypatch):
    # trials does not depend on pairs: `dvc repro trials` alone would leave pairs.parquet out.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match=r"pairs\.parquet.*`dvc repro pairs trials`"):
        suite.run(sizes=TINY)


def test_koch_network_costs_10_9_gflop_per_training_pair():
    from siamese.model import build_model

    assert pair_flops(build_model("koch", 105), 105) == pytest.approx(10.9e9, rel=0.005)


# The packages the GPU machine's Python lacks: the benchmark must run without any of them
# (None in sys.modules: importing one raises ImportError, find_spec answers None).
BLOCKED = ("yaml", "tqdm", "matplotlib", "dvclive", "prefect", "dvc")
WITHOUT = f"""
import runpy, sys
sys.modules.update(dict.fromkeys({BLOCKED!r}))
runpy.run_module("tools.bench.gpu", run_name="__main__", alter_sys=True)
"""


def test_gpu_benchmark_smoke_runs_without_yaml_tqdm_matplotlib(source, tmp_path):
    """As tools/bench/gpu.sh runs it: `python -m tools.bench.gpu` from the repository root."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", WITHOUT, "--smoke", "--zips", str(source), "--out", str(out)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    r = json.loads((out / "gpu.json").read_text())
    assert r["not_installed"] == ["yaml", "tqdm", "matplotlib", "dvclive"]
    assert set(r["data_stages_s"]) == {"fetch", "index", "split", "pairs", "trials"}
    step = r["koch_step"][0]
    assert step["pairs_per_s"] > 0 and step["fraction_of_peak"] > 0
    assert r["evaluate"]["step"] == 2 and {"evaluation 20-way", "lake 20-way"} <= set(r["evaluate"])
    assert "| Koch step bf16" in (out / "gpu.md").read_text()


def test_gpu_benchmark_reads_params_yaml_without_pyyaml():
    import yaml

    from tools.bench import gpu

    text = (REPO / "params.yaml").read_text()
    assert gpu.parse_yaml(text) == yaml.safe_load(text)
