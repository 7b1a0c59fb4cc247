"""train.cpu_paths: the kernels are pinned before torch loads, and the determinism probe
computes, on this machine, exactly the weights and scores the committed results came from."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from siamese import cpu
from tests.stagekit import siamese_command
from tools.bench.probe import first_difference

# `siamese bench --determinism` on the real data (10 steps): (profile, train overrides, weights
# sha256, scores sha256). The first is the profile of issue 18 (28x28, no rotations), the
# second params.yaml's, the committed model's. pinned_probe_layers.json holds each profile's
# first step layer by layer (`siamese bench --determinism --json`'s "layers"), to name where a
# machine that computes other weights parts from these.
PINNED = [
    ("issue 18", ["--train", "rotations=1", "--train", "image_size=28"],
     "b626fd67664836786498fd3e1b618fdce835d2c28615aa2a3c966b0ca250fe12",
     "69011f0b89ac85b63ac7a5f7148aee7bfd3468f934dfdeeebe588b7544915aec"),
    ("default", [], "92fafd8901a0657403552774fbcbc231be518534b8bcd8355b18f13198cd60ae",
     "2e86103f3c23b40ae6e702f0fbc3f8dfafa3e8cc5f8dcc983b28fc1da5675172"),
]
PINNED_LAYERS = Path(__file__).with_name("pinned_probe_layers.json")

def torch_in_fresh_process(code: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, check=True)
    return done.stdout.strip()


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in cpu.SETTINGS}


@pytest.mark.skipif(cpu.unreproducible_reason("avx2") is not None, reason="no AVX2 here")
def test_avx2_is_in_force_when_pinned_before_torch_loads():
    code = ("from siamese import cpu; cpu.pin_paths('avx2'); import torch; "
            "print(torch.backends.cpu.get_cpu_capability(), cpu.warnings('avx2'))")
    assert torch_in_fresh_process(code, clean_env()) == "AVX2 []"


def test_native_keeps_what_the_user_set():
    env = {**clean_env(), "MKL_CBWR": "COMPATIBLE"}
    code = "from siamese import cpu; print(cpu.pin_paths('native'))"
    assert "'MKL_CBWR': 'COMPATIBLE'" in torch_in_fresh_process(code, env)


# A training step's convolutions (forward, both gradients) with oneDNN's log on: its lines name
# each primitive it runs.
CONVOLVE = """
import sys, torch
from siamese import cpu
conv = torch.nn.Conv2d(8, 16, 3).to(memory_format=torch.channels_last)
x = torch.randn(16, 8, 12, 12, requires_grad=True).contiguous(memory_format=torch.channels_last)
with cpu.kernels(sys.argv[1]):
    conv(x).sum().backward()
print(torch._C._get_mkldnn_enabled(), torch._C._get_nnpack_enabled())
"""


@pytest.mark.parametrize(("choice", "onednn_runs"), [("avx2", False), ("native", True)])
def test_avx2_convolves_without_onednn(choice, onednn_runs):
    done = subprocess.run([sys.executable, "-c", CONVOLVE, choice], capture_output=True,
                          text=True, env={**clean_env(), "ONEDNN_VERBOSE": "1"}, check=True)
    ran = [line for line in done.stdout.splitlines() if "primitive,exec" in line]
    assert bool(ran) is onednn_runs, ran[:3]
    assert done.stdout.splitlines()[-1] == "True True"  # restored after


def test_paths_set_after_torch_loaded_are_a_warning(monkeypatch):
    import torch  # noqa: F401  (loaded, as in any process that trains without `siamese`)

    for name in cpu.SETTINGS:
        monkeypatch.delenv(name, raising=False)
    [line] = cpu.warnings("avx2")
    assert "train.cpu_paths avx2 is not in force in this process" in line
    assert cpu.warnings("native") == []


def test_a_cpu_without_avx2_or_not_x86_is_told_its_weights_will_differ(monkeypatch):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: ["avx"])
    [line] = cpu.warnings("avx2")
    assert line.startswith("train.cpu_paths avx2: this CPU") and "has no AVX2" in line
    monkeypatch.setattr(cpu.platform, "machine", lambda: "aarch64")
    assert "aarch64 CPU, not x86-64; its weights will differ" in cpu.warnings("avx2")[0]


def test_the_allocator_is_tuned_on_glibc():
    assert cpu.tune_allocator() is (sys.platform == "linux")


@pytest.mark.slow
@pytest.mark.skipif(cpu.unreproducible_reason("avx2") is not None, reason="no AVX2 here")
@pytest.mark.parametrize(("profile", "overrides", "weights", "scores"), PINNED)
def test_determinism_probe_computes_the_pinned_weights_and_scores(real_data_root, profile,
                                                                   overrides, weights, scores):
    done = subprocess.run([siamese_command(), "bench", "--determinism", "--json", *overrides],
                          cwd=real_data_root, capture_output=True, text=True, env=clean_env())
    assert done.returncode == 0, done.stderr
    probe = json.loads(done.stdout)
    assert probe["settings"] == cpu.PATHS["avx2"] and probe["aten_capability"] == "AVX2"
    parted = first_difference(probe["layers"], json.loads(PINNED_LAYERS.read_text())[profile])
    where = f"{probe['cpu']} ({' '.join(probe['flags'])}); first to differ: {parted}"
    assert probe["weights_sha256"] == weights, f"other weights on {where}"
    assert probe["scores_sha256"] == scores, f"other scores on {where}"
    assert parted is None, f"other layer outputs or gradients on {where}"


def test_the_first_layer_that_differs_is_named():
    rows = [{"what": "output", "layer": "features.0 (Conv2d)", "sha256": "a"},
            {"what": "gradient", "layer": "head.weight", "sha256": "b"}]
    assert first_difference(rows, rows) is None
    other = [rows[0], {**rows[1], "sha256": "c"}]
    assert first_difference(rows, other) == "the gradient of head.weight (first step)"
    assert "number of layer rows" in first_difference(rows, rows[:1])



def test_siamese_in_process_pins_nothing_once_torch_has_loaded(monkeypatch, tmp_path):
    import torch  # noqa: F401  (as in a test or notebook that calls `siamese` in-process)

    from tools.cli import prepare_process

    for name in cpu.SETTINGS:
        monkeypatch.delenv(name, raising=False)
    prepare_process(tmp_path / "params.yaml")  # spawned children would inherit the pins
    assert cpu.in_force() == {name: "" for name in cpu.SETTINGS}


def test_scoring_convolves_as_the_checkpoint_was_trained():
    assert cpu.trained_with({"cpu_paths": {"cpu_paths": "native", "MKL_CBWR": ""}}) == "native"
    assert cpu.trained_with({"cpu_paths": cpu.record("avx2")}) == "avx2"
    assert cpu.trained_with({}) == cpu.DEFAULT  # a checkpoint that records none
