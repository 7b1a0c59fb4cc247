"""train.cpu_paths: the kernels are pinned before torch loads, and the determinism probe
computes, on this machine, exactly the weights and scores the committed results came from."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from siamese import cpu
from siamese.errors import PipelineError
from tests.stagekit import siamese_command
from tools.bench.probe import emulated_probes, first_difference, format_emulated

# What this project's machine computed (`siamese bench --determinism --json`, and `--emulate`),
# in the layout of ../shared/reference/: each probe's weights and scores sha256 and its rows
# (the first step layer by layer, then what each step left), to name where a machine that
# computes other weights parts from these. Profiles: params.yaml's, the committed model's
# ("default"), and issue 18's (28x28, no rotations).
PROBES = Path(__file__).with_name("probes") / "intel-xeon-6-167"
PROFILES = {"default": [], "issue18": ["--train", "rotations=1", "--train", "image_size=28"]}


def pinned_probe(profile: str, steps: int = 10) -> dict:
    return json.loads((PROBES / f"probe-{profile}-steps{steps}.json").read_text())

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
# each primitive it runs. Then whether siamese.gemm computed them, and the flags restored after.
CONVOLVE = """
import sys, torch
from siamese import cpu, gemm
from siamese.model import Conv2d
conv = Conv2d(8, 16, 3).to(memory_format=torch.channels_last)
x = torch.randn(16, 8, 12, 12, requires_grad=True).contiguous(memory_format=torch.channels_last)
with cpu.kernels(sys.argv[1]):
    conv(x).sum().backward()
    print(gemm.active(x))
print(torch._C._get_mkldnn_enabled(), torch._C._get_nnpack_enabled(), gemm.active(x))
"""


@pytest.mark.parametrize(("choice", "onednn_runs"), [("avx2", False), ("native", True)])
def test_avx2_convolves_by_the_pinned_gemm_not_onednn(choice, onednn_runs):
    done = subprocess.run([sys.executable, "-c", CONVOLVE, choice], capture_output=True,
                          text=True, env={**clean_env(), "ONEDNN_VERBOSE": "1"}, check=True)
    ran = [line for line in done.stdout.splitlines() if "primitive,exec" in line]
    assert bool(ran) is onednn_runs, ran[:3]
    assert done.stdout.splitlines()[-2:] == [str(not onednn_runs), "True True False"]


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
@pytest.mark.parametrize("profile", PROFILES)
def test_determinism_probe_computes_the_pinned_weights_and_scores(real_data_root, profile):
    done = subprocess.run([siamese_command(), "bench", "--determinism", "--json",
                           *PROFILES[profile]],
                          cwd=real_data_root, capture_output=True, text=True, env=clean_env())
    assert done.returncode == 0, done.stderr
    probe, pinned = json.loads(done.stdout), pinned_probe(profile)
    assert probe["settings"] == cpu.PATHS["avx2"] and probe["aten_capability"] == "AVX2"
    assert probe["gemm_isa"] in ("avx512", "avx2")  # the scalar fallback would take hours
    parted = first_difference(probe["layers"], pinned["layers"])
    where = f"{probe['cpu']} ({' '.join(probe['flags'])}); first to differ: {parted}"
    assert probe["weights_sha256"] == pinned["weights_sha256"], f"other weights on {where}"
    assert probe["scores_sha256"] == pinned["scores_sha256"], f"other scores on {where}"
    assert parted is None, f"other layer outputs, gradients or states on {where}"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("qemu-x86_64") is None,
                    reason="qemu-user not installed (apt-get install qemu-user)")
def test_an_emulated_amd_and_intel_cpu_and_this_one_capped_compute_the_pinned_weights(
        real_data_root):
    done = subprocess.run([siamese_command(), "bench", "--determinism", "--emulate", "--json"],
                          cwd=real_data_root, capture_output=True, text=True, env=clean_env())
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    pinned = json.loads((PROBES / "emulated-steps2.json").read_text())[0]
    assert [row["run_as"] for row in rows] == [
        "this CPU", "this CPU, capped at AVX2", "EPYC-Milan", "Haswell-v4"]
    for row in rows:
        assert row["settings"] == cpu.PATHS["avx2"]
        parted = first_difference(row["layers"], pinned["layers"])
        assert (row["weights_sha256"], parted) == (pinned["weights_sha256"], None), (
            f"{row['run_as']} parts from the pinned run at {parted}")


@pytest.mark.slow
def test_emulated_runs_take_the_train_overrides_and_steps(real_data_root, tmp_path):
    # a stand-in for qemu-x86_64 that drops `-cpu MODEL` and runs the probe on this CPU
    fake = tmp_path / "bin" / "qemu-x86_64"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nshift 2\nexec "$@"\n')
    fake.chmod(0o755)
    env = {**clean_env(), "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([siamese_command(), "bench", "--determinism", "--emulate", "--json",
                           "--steps", "1", "--train", "episode_characters=3"],
                          cwd=real_data_root, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [row["run_as"] for row in rows] == [
        "this CPU", "this CPU, capped at AVX2", "EPYC-Milan", "Haswell-v4"]
    for row in rows:
        assert row["steps"] == 1
        assert row["train_overrides"] == {"episode_alphabets": 1, "episode_characters": 3,
                                          "rotations": 1, "cpu_paths": "avx2"}
    assert {row["weights_sha256"] for row in rows} == {rows[0]["weights_sha256"]}


def test_emulated_runs_say_which_cpu_parted_and_where():
    rows = [{"run_as": run_as, "cpu_paths": "avx2", "steps": 2, "train_overrides": {},
             "weights_sha256": digest, "first_difference": parted}
            for run_as, digest, parted in [("this CPU", "a" * 64, None),
                                           ("EPYC-Milan", "b" * 64,
                                            "the value of head.weight (after step 1)")]]
    assert "first to differ from this CPU: the value of head.weight (after step 1)" in \
        format_emulated(rows)
    rows[1].update(weights_sha256="a" * 64, first_difference=None)
    assert format_emulated(rows).endswith("the same as this CPU")


def test_emulation_without_qemu_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(PipelineError, match="qemu-x86_64 not found .*apt-get install qemu-user"):
        emulated_probes("avx2")


def test_probe_options_without_determinism_are_one_clear_line(capsys):
    from tools.cli import main

    assert main(["bench", "--emulate"]) == 1
    assert "--emulate, --json, --train and --steps go with --determinism" in capsys.readouterr().err


def test_the_first_row_that_differs_is_named_within_a_step_and_between_steps():
    rows = [{"what": "output", "layer": "features.0 (Conv2d)", "sha256": "a", "step": 1},
            {"what": "gradient", "layer": "head.weight", "sha256": "b", "step": 1},
            {"what": "optimiser exp_avg_sq", "layer": "head.weight", "sha256": "c", "step": 1},
            {"what": "value", "layer": "head.weight", "sha256": "d", "step": 2}]
    assert first_difference(rows, rows) is None
    assert first_difference(rows, [rows[0], {**rows[1], "sha256": "x"}, *rows[2:]]) == \
        "the gradient of head.weight (first step)"
    assert first_difference(rows, [*rows[:2], {**rows[2], "sha256": "x"}, rows[3]]) == \
        "the optimiser exp_avg_sq of head.weight (after step 1)"
    assert first_difference(rows, [*rows[:3], {**rows[3], "sha256": "x"}]) == \
        "the value of head.weight (after step 2)"
    assert "number of layer rows" in first_difference(rows, rows[:1])
    earlier = [{k: v for k, v in row.items() if k != "step"} for row in rows[:2]]
    assert first_difference(rows[:2], earlier) is None  # a probe before steps had rows


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
