"""The determinism probe: a few training steps of params.yaml's profile on the real data, and
what they computed, as sha256s to compare across machines.

`siamese bench --determinism` runs it in its own process, whose CPU code paths and allocator
`siamese` has set from params.yaml (train.cpu_paths) before torch loaded. `siamese bench` also
runs it as `python -m tools.bench.probe --paths P --allocator A` in fresh processes, one per
setting, to compare their speed: those settings act only before torch loads.

What is hashed: the weights after `steps` optimiser steps (every state_dict tensor's bytes in
order, the same form as the probes of the determinism issue), and the scores of that model, in
eval mode, on the first PROBE_TRIALS valid trials (the scoring path of evaluate and classify).
And, layer by layer, the first step: each leaf module's output in the order the forward pass
calls them, then each parameter's gradient. Where two machines compute other weights, the
first of these rows that differs names the kernel that parted them. `emulated_probes` runs the
first steps of a small episode under qemu-user as an AMD and an Intel CPU, to compare what the
libraries choose on CPUs this machine is not.
"""

import argparse
import hashlib
import json
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from siamese import cpu, paths
from siamese.errors import PipelineError

PROBE_STEPS = 10
PROBE_TRIALS = 100
MATMUL_SIZE = 1024


def run_probe(steps: int = PROBE_STEPS, cpu_paths: str | None = None,
              allocator: str = "tuned", train: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `steps` steps of the profile in this process; its sha256s, speed and CPU time.
    `cpu_paths` and `allocator` say what was set before torch loaded (default: params.yaml's
    train.cpu_paths, as `siamese` sets it); `train` overrides keys of the train section."""
    import numpy as np
    import torch

    from siamese.scoring import trial_scores
    from tools.bench.trainparts import pair_flops, project_loader

    chosen = {"cpu_paths": cpu_paths} if cpu_paths else {}
    cfg, data = load_profile({**chosen, **(train or {})})
    cpu_device = torch.device("cpu")
    generators = np.random.default_rng(0), torch.Generator().manual_seed(0)
    images = len(project_loader(cfg, data, *generators, cpu_device)()[0])  # step_runner's first
    with training_steps(cfg, data, steps) as run:
        scores = trial_scores(run.net.eval(), data.images, data.valid.iloc[:PROBE_TRIALS],
                              cpu_device)
        peak = matmul_peak(torch)
    step_gflop = images * pair_flops(run.net, cfg.image_size) / 2 / 1e9
    return {
        **run.machine,
        "allocator": allocator,
        "threads": torch.get_num_threads() if cfg.threads == 0 else cfg.threads,
        "steps": steps,
        "train_overrides": dict(train or {}),
        "weights_sha256": weights_digest(run.net),
        "scores_sha256": hashlib.sha256(scores.astype("<f4").tobytes()).hexdigest(),
        "steps_per_s": round(steps / run.seconds, 3),
        "system_share": round(run.system_s / max(run.user_s + run.system_s, 1e-9), 3),
        "minor_faults": run.minor_faults,
        "matmul_peak_gflop_per_s": round(peak, 1),
        "step_gflop_per_s": round(step_gflop * steps / run.seconds, 1),
        "step_fraction_of_peak": round(step_gflop * steps / run.seconds / peak, 3),
        "layers": run.layers,
    }


def run_first_steps(steps: int, train: dict[str, Any]) -> dict[str, Any]:
    """Only the weights and the layers of `run_probe`, for a run under an emulator: no scores,
    no speed (they would take the emulator an hour)."""
    cfg, data = load_profile(train)
    with training_steps(cfg, data, steps) as run:
        pass
    return {**run.machine, "steps": steps, "train_overrides": train,
            "weights_sha256": weights_digest(run.net), "layers": run.layers}


def load_profile(train: dict[str, Any]) -> tuple[Any, Any]:
    """params.yaml's training profile, with `train`'s keys overriding its train section, and
    its data on the CPU."""
    import torch

    from siamese.config import load_params
    from siamese.episodes import load_data
    from tools.bench.trainparts import train_config

    cfg = train_config(load_params(paths.PARAMS), **train)
    return cfg, load_data(cfg, torch.device("cpu"))


@dataclass
class Steps:
    """What `training_steps` ran: the model after them, its rows (the first step's layers,
    what each step left), the machine and settings in force, and what the steps took: wall
    seconds, user and system CPU seconds, minor page faults."""
    net: Any
    layers: list[dict[str, Any]]
    machine: dict[str, Any]
    seconds: float
    user_s: float
    system_s: float
    minor_faults: int


@contextmanager
def training_steps(cfg: Any, data: Any, steps: int) -> Iterator[Steps]:
    """`steps` training steps of the profile, timed (the steps alone; the CPU times and faults
    include the hashing), with the rows of each (`recording_layers` for the first,
    `state_rows` after each); within, still under its deterministic
    settings and convolution kernels (siamese.distributed.deterministic), what they trained."""
    from siamese.distributed import deterministic
    from tools.bench.trainparts import step_runner

    with deterministic(cfg):
        step, net, optimizer = step_runner(cfg, data)
        before = resource.getrusage(resource.RUSAGE_SELF)
        seconds = 0.0  # in the steps alone, not in hashing what they left

        def timed_step() -> None:
            nonlocal seconds
            started = time.perf_counter()
            step()
            seconds += time.perf_counter() - started

        with recording_layers(net) as layers:
            timed_step()
        layers += state_rows(net, optimizer, 1)
        for done in range(2, steps + 1):
            timed_step()
            layers += state_rows(net, optimizer, done)
        after = resource.getrusage(resource.RUSAGE_SELF)
        yield Steps(net, layers, cpu.describe(cfg.cpu_paths), seconds,
                    after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime,
                    after.ru_minflt - before.ru_minflt)


def weights_digest(net) -> str:
    """sha256 of every state_dict tensor's bytes in order: the form of the pinned sha256s and
    of the determinism issue's table, which siamese.model.weights_digest (names, dtypes and
    shapes too) would not compare with."""
    return hashlib.sha256(b"".join(v.detach().cpu().contiguous().numpy().tobytes()
                                   for v in net.state_dict().values())).hexdigest()


def tensor_digest(tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


@contextmanager
def recording_layers(net) -> Iterator[list[dict[str, str]]]:
    """Within: one training step of `net`. The rows it yields then hold the sha256 of each leaf
    module's output, in call order (both twins), and of each parameter's gradient."""
    rows: list[dict[str, str]] = []

    def recorder(name: str):  # the module's name and kind, e.g. "features.0 (Conv2d)"
        def record(_module: Any, _inputs: Any, output: Any) -> None:
            rows.append({"what": "output", "layer": name, "sha256": tensor_digest(output)})
        return record

    leaves = [(name, m) for name, m in net.named_modules() if name and not any(m.children())]
    handles = [m.register_forward_hook(recorder(f"{name} ({type(m).__name__})"))
               for name, m in leaves]
    try:
        yield rows
    finally:
        for handle in handles:
            handle.remove()
    rows.extend({"what": "gradient", "layer": name, "sha256": tensor_digest(p.grad)}
                for name, p in net.named_parameters() if p.grad is not None)


def state_rows(net, optimizer, step: int) -> list[dict[str, Any]]:
    """What a step leaves for the next: the sha256 of each weight and buffer (batch norm's
    running statistics) and of each tensor of the optimiser's state (Adam's moments, its step
    count), after optimiser step `step`."""
    names = {id(p): name for name, p in net.named_parameters()}
    rows = [{"step": step, "what": "value", "layer": name, "sha256": tensor_digest(value)}
            for name, value in net.state_dict().items()]
    rows += [{"step": step, "what": f"optimiser {key}", "layer": names[id(p)],
              "sha256": tensor_digest(value)}
             for p, state in optimizer.state.items() for key, value in state.items()
             if hasattr(value, "numpy")]
    return rows


def first_difference(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> str | None:
    """The first row where two probes part, in words; None where all agree. The rows: the first
    step layer by layer, then after each step what it leaves (`state_rows`); a probe of an
    earlier version has the first step's layer rows alone, each without its step."""
    for mine, other in zip(ours, theirs, strict=False):
        if {"step": 1, **mine} != {"step": 1, **other}:
            step = mine.get("step", 1)
            when = "first step" if mine["what"] in ("output", "gradient") else f"after step {step}"
            return f"the {mine['what']} of {mine['layer']} ({when})"
    if len(ours) != len(theirs):
        return f"the number of layer rows ({len(ours)} here, {len(theirs)} there)"
    return None


def probe_command(paths_choice: str, allocator: str, steps: int, *extra: str) -> list[str]:
    """`main` below in a fresh process, which sets the paths and allocator before torch loads."""
    return [sys.executable, "-m", "tools.bench.probe", "--paths", paths_choice,
            "--allocator", allocator, "--steps", str(steps), *extra]


def probe_env() -> dict[str, str]:
    """The environment of a probe's process: without this process's own pins, which `native`
    would otherwise inherit."""
    from tools.bench.timing import child_env

    return {k: v for k, v in child_env().items() if k not in cpu.SETTINGS}


# (train.cpu_paths, allocator): before this project set either, and each one alone
CPU_SETTINGS = (("native", "default"), ("native", "tuned"), ("avx2", "default"), ("avx2", "tuned"))


def bench_cpu_settings(steps: int) -> dict[str, Any]:
    """The probe in a fresh process per setting of CPU_SETTINGS, `steps` steps each; the speed
    ratios of the project's setting (avx2, tuned) to the others."""
    out: dict[str, Any] = {}
    for paths_choice, allocator in CPU_SETTINGS:
        cmd = probe_command(paths_choice, allocator, steps)
        done = subprocess.run(cmd, capture_output=True, text=True, env=probe_env())
        if done.returncode != 0:
            raise PipelineError(f"bench: {' '.join(cmd)} failed ({done.returncode}):\n"
                                f"{done.stderr[-2000:]}")
        out[f"{paths_choice}, {allocator} allocator"] = json.loads(done.stdout)
    ours = out["avx2, tuned allocator"]["steps_per_s"]
    out["speedup_over_before"] = round(ours / out["native, default allocator"]["steps_per_s"], 2)
    out["avx2_over_native"] = round(ours / out["native, tuned allocator"]["steps_per_s"], 2)
    return out


# qemu-user's models of an AMD and an Intel CPU with AVX2 (qemu emulates no AVX-512), and a
# small episode, so that each emulated run takes about a minute.
EMULATED_CPUS = ("EPYC-Milan", "Haswell-v4")
EMULATION_PROFILE = {"episode_alphabets": 1, "episode_characters": 6, "rotations": 1}
EMULATION_STEPS = 2
# The libraries' own switches that cap their instruction set at AVX2 (those the path does not
# pin already), and siamese.gemm's: on a CPU with AVX-512, a kernel chosen by its presence
# gives other bits here.
CAPPED_TO_AVX2 = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "SIAMESE_GEMM_ISA": "avx2"}


def emulated_probes(choice: str, steps: int = EMULATION_STEPS,
                    train: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """`run_first_steps` of EMULATION_PROFILE (`train` overriding its keys) with train.cpu_paths
    `choice`, side by side: on this CPU as it is, on this CPU with every library capped at AVX2
    (CAPPED_TO_AVX2), and under qemu-user as each CPU of EMULATED_CPUS. Each row names the first
    row where it parts from this CPU's. Under qemu, what CPUID tells the libraries (vendor,
    instructions, caches) is the emulated CPU's, so the kernels they choose are that CPU's; the
    arithmetic is qemu's, exact where the hardware's is (IEEE + - x / sqrt and FMA) and its own
    where the hardware's is an approximation (rcp, rsqrt), which a reproducible path must not
    use. (Every row's `cpu` and `flags` are the host's: qemu-user passes /proc/cpuinfo
    through.)"""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        raise PipelineError("bench --emulate: qemu-x86_64 not found (Debian and Ubuntu: "
                            "apt-get install qemu-user)")
    profile = {**EMULATION_PROFILE, "cpu_paths": choice, **(train or {})}
    cmd = probe_command(profile["cpu_paths"], "tuned", steps, "--first-steps",
                        json.dumps(profile))
    variants = {"this CPU": ([], {}), "this CPU, capped at AVX2": ([], CAPPED_TO_AVX2),
                **{model: ([qemu, "-cpu", model], {}) for model in EMULATED_CPUS}}
    runs = {name: subprocess.Popen([*prefix, *cmd], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env={**probe_env(), **env})
            for name, (prefix, env) in variants.items()}
    rows = []
    for name, run in runs.items():
        out, err = run.communicate()
        if run.returncode != 0:
            tail = [line for line in err.splitlines() if "TCG doesn't support" not in line]
            raise PipelineError(f"bench --emulate: {name} failed ({run.returncode}):\n"
                                + "\n".join(tail[-20:]))
        rows.append({"run_as": name, **json.loads(out)})
    for row in rows:
        row["first_difference"] = first_difference(rows[0]["layers"], row["layers"])
    return rows


def format_emulated(rows: list[dict[str, Any]]) -> str:
    first = rows[0]
    lines = [f"train.cpu_paths {first['cpu_paths']}, {first['steps']} steps of "
             f"{first['train_overrides']}:"]
    for row in rows:
        if row is first:
            verdict = ""
        elif row["weights_sha256"] == first["weights_sha256"] and not row["first_difference"]:
            verdict = f"the same as {first['run_as']}"
        else:
            verdict = f"first to differ from {first['run_as']}: {row['first_difference']}"
        lines.append(f"  {row['run_as']:26} weights {row['weights_sha256'][:16]}  {verdict}")
    return "\n".join(lines)


def matmul_peak(torch) -> float:
    """fp32 GFLOP/s of a matrix multiply on this process's threads (best of 5), by the
    kernel the network's layers use here: siamese.gemm's pinned one where it is active (within
    the `avx2` path), else torch's."""
    from siamese import gemm

    b = torch.rand(MATMUL_SIZE, MATMUL_SIZE)
    pinned = gemm.active(b)  # then rows enough for a chunk on each thread
    rows = max(MATMUL_SIZE, gemm.CHUNK_ROWS * torch.get_num_threads()) if pinned else MATMUL_SIZE
    a, multiply = torch.rand(rows, MATMUL_SIZE), gemm.mm if pinned else torch.mm
    multiply(a, b)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(4):
            multiply(a, b)
        best = min(best, (time.perf_counter() - started) / 4)
    return 2 * rows * MATMUL_SIZE**2 / best / 1e9


def format_probe(result: dict[str, Any]) -> str:
    settings = " ".join(f"{k}={v or '(unset)'}" for k, v in result["settings"].items())
    return "\n".join([
        f"cpu:        {result['cpu']} ({result['machine']}; {' '.join(result['flags'])})",
        f"paths:      train.cpu_paths {result['cpu_paths']}: {settings}; ATen "
        f"{result['aten_capability']}; convolutions by "
        f"{convolutions_by(result)}; "
        f"{result['threads']} threads",
        f"weights:    {result['weights_sha256']}  (after {result['steps']} steps)",
        f"scores:     {result['scores_sha256']}  (first {PROBE_TRIALS} valid trials)",
        f"speed:      {result['steps_per_s']} steps/s, system time {result['system_share']:.0%} "
        f"of CPU time; the step at {result['step_gflop_per_s']} GFLOP/s, "
        f"{result['step_fraction_of_peak']:.0%} of the fp32 matrix-multiply peak "
        f"({result['matmul_peak_gflop_per_s']} GFLOP/s)",
        "first step, layer by layer (--json has all, and what each step leaves):",
        *(f"  {row['what']:8} {row['layer']:28} {row['sha256'][:16]}"
          for row in result["layers"] if row["what"] in ("output", "gradient")),
    ])


def convolutions_by(result: dict[str, Any]) -> str:
    if result["onednn_convolutions"]:
        return "oneDNN"
    if result["cpu_paths"] == "native":
        return "ATen and MKL"
    return f"siamese/_gemm.c's fma chains, on {result.get('gemm_isa')} (siamese/gemm.py)"


def main(argv: list[str] | None = None) -> None:
    """A fresh process: set the paths and allocator first, then probe; JSON on stdout."""
    parser = argparse.ArgumentParser(prog="python -m tools.bench.probe")
    parser.add_argument("--paths", choices=tuple(cpu.PATHS), required=True)
    parser.add_argument("--allocator", choices=("tuned", "default"), required=True)
    parser.add_argument("--steps", type=int, default=PROBE_STEPS)
    parser.add_argument("--first-steps", metavar="TRAIN_JSON",
                        help="only the weights and layers, of the train overrides given")
    args = parser.parse_args(argv)
    if args.allocator == "tuned":
        cpu.tune_allocator()
    cpu.pin_paths(args.paths)
    if args.first_steps:
        result = run_first_steps(args.steps, json.loads(args.first_steps))
    else:
        result = run_probe(args.steps, args.paths, args.allocator)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
