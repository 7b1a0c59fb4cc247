"""train.cpu_paths: the kernels are pinned before torch loads, and the determinism probe
computes, on this machine, exactly the weights and scores the committed results came from."""

import json
import os
import subprocess
import sys

import pytest

from siamese import cpu
from tests.stagekit import siamese_command

# `siamese bench --determinism` on the real data (10 steps): (train overrides, weights sha256,
# scores sha256). The first is the profile of issue 18 (28x28, no rotations), whose weights an
# AMD EPYC with AVX2 and no AVX-512 computed with the same three settings: another CPU, the
# same bits. The second is params.yaml's profile, the committed model's.
PINNED = [
    (["--train", "rotations=1", "--train", "image_size=28"],
     "52513a3f1a0b5c30f44cc7f727c4bb285d165b33af5479ec6f50f8972db7c56b",
     "ebab9cebd88871ef527e876891b951c41241411aef6df3022e2cce5b23c7e088"),
    ([], "782aefd6392ece4bd86f3bd495acd97dc9ad5454d7d31b0645ab5ec4a16021dd",
     "c9e45b078a5e2f169b23e020daed97c50322eed81b643fd21c54b1dde60b4f01"),
]

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
@pytest.mark.parametrize(("overrides", "weights", "scores"), PINNED)
def test_determinism_probe_computes_the_pinned_weights_and_scores(real_data_root, overrides,
                                                                   weights, scores):
    done = subprocess.run([siamese_command(), "bench", "--determinism", "--json", *overrides],
                          cwd=real_data_root, capture_output=True, text=True, env=clean_env())
    assert done.returncode == 0, done.stderr
    probe = json.loads(done.stdout)
    assert probe["settings"] == cpu.PATHS["avx2"] and probe["aten_capability"] == "AVX2"
    where = f"{probe['cpu']} ({' '.join(probe['flags'])})"
    assert probe["weights_sha256"] == weights, f"other weights on {where}"
    assert probe["scores_sha256"] == scores, f"other scores on {where}"



def test_siamese_in_process_pins_nothing_once_torch_has_loaded(monkeypatch, tmp_path):
    import torch  # noqa: F401  (as in a test or notebook that calls `siamese` in-process)

    from tools.cli import prepare_process

    for name in cpu.SETTINGS:
        monkeypatch.delenv(name, raising=False)
    prepare_process(tmp_path / "params.yaml")  # spawned children would inherit the pins
    assert cpu.in_force() == {name: "" for name in cpu.SETTINGS}
