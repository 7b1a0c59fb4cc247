"""The GPU benchmark, for a lent H200, in under 8 minutes of machine time: from the repository
root, `python -m tools.bench.gpu --zips DIR` (tools/bench/gpu.sh runs it).

1. builds the data from the three Omniglot zips in a folder, with the project's own stage
   functions (tasks.fetch.run ... tasks.trials.run), in a scratch folder;
2. measures the bf16 matrix-product peak (8192^3, random operands, CUDA events);
3. measures Koch's network's training step in bf16 as train.py runs it (pairs/s, and the
   fraction of that peak in model FLOPs: 10.9 GFLOP per pair, counted from the layers);
4. trains Koch's network at 105x105 with tasks.train for the time left, on the default
   recipe otherwise (episodes, Adam at lr 5e-4, rotations: the README's "stronger variant";
   Koch's own pairs + SGD recipe needs far more steps than a few minutes give), then scores
   the 20-way evaluation and Lake trials with the evaluate stage's scoring.
Prints a table; writes gpu.json (and gpu.md) to --out, or $OUT when set.

It runs with the machine's own Python, which has torch, numpy, pandas, pyarrow and pillow:
every import of the project's is made where it is used, and none of them needs pyyaml, tqdm,
matplotlib or dvclive (training shows no bar and draws no curves without them; params.yaml
is read by parse_yaml where pyyaml is missing). `--smoke` runs every step on the CPU at tiny
sizes (the test suite does, on synthetic zips).
"""

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

DATA_STAGES = ("fetch", "index", "split", "pairs", "trials")
KOCH_NET = {"arch": "koch", "image_size": 105, "lr": 0.0005}  # the rest: params.yaml's train
# What a small synthetic source (tests/test_bench.py's) can feed.
SMOKE_EDITS: dict[str, dict[str, Any]] = {
    "index": {"expected_fingerprint": None, "expected_runs_fingerprint": None},
    "pairs": {"train_count": 200, "valid_count": 100},
    "trials": {"n_way": [20], "per_alphabet": 2},
    # Koch's network at 65x65, the smallest input it takes: the same code, 2.6x less work.
    "train": {"image_size": 65, "episode_alphabets": 2, "episode_characters": 4, "eval_every": 2},
}
H200_BF16_FLOPS = 790e12  # the figure for dense bf16 matrix work
EVAL_RESERVE_S = 40.0  # kept back from training for the final evaluation and the report
OPTIONAL = ("yaml", "tqdm", "matplotlib", "dvclive")  # used where installed


# --- params.yaml without pyyaml -----------------------------------------------------------------


def scalar(text: str) -> Any:
    """A YAML scalar or flow list, as params.yaml writes them."""
    if text.startswith("[") and text.endswith("]"):
        return [scalar(t.strip()) for t in text[1:-1].split(",") if t.strip()]
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text in ("null", "~"):
        return None
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_yaml(text: str) -> dict[str, Any]:
    """The subset of YAML that params.yaml uses: nested mappings by indentation, scalars,
    flow lists and comments."""
    root: dict[str, Any] = {}
    stack: list[tuple[int, dict[str, Any]]] = [(-1, root)]
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        key, _, value = line.strip().partition(":")
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        if value.strip():
            parent[key] = scalar(value.strip())
        else:
            parent[key] = {}
            stack.append((indent, parent[key]))
    return root


def read_params(text: str) -> dict[str, Any]:
    """params.yaml's text as a dict: by pyyaml where installed, else by parse_yaml."""
    try:
        import yaml
    except ImportError:
        return parse_yaml(text)
    return yaml.safe_load(text)


# --- steps --------------------------------------------------------------------------------------


def build_params(smoke: bool) -> dict[str, Any]:
    """params.yaml with Koch's network in its train section (and the smoke edits)."""
    params = read_params((REPO / "params.yaml").read_text())
    params["train"] = {**params["train"], **KOCH_NET}
    for name, values in (SMOKE_EDITS if smoke else {}).items():
        params[name] = {**params[name], **values}
    return params


def build_data(params: dict[str, Any], zips: Path) -> dict[str, float]:
    """The five data stages, called as functions (as the CLI does), timed."""
    os.environ["OMNIGLOT_SOURCE"] = str(zips.resolve())
    seconds = {}
    for stage in DATA_STAGES:
        start = time.perf_counter()
        importlib.import_module(f"tasks.{stage}").run(params)
        seconds[stage] = round(time.perf_counter() - start, 2)
    return seconds


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, calls: int, warmup: int, device: str) -> float:
    """Median seconds of one call, after `warmup` calls; CUDA synchronised around each."""
    import statistics

    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(device: str, n: int, calls: int) -> float:
    """bf16 FLOP/s of an n x n x n product on random operands, timed with CUDA events."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    if not device.startswith("cuda"):
        return 2 * n**3 / timed(lambda: a @ b, calls, 1, device)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n**3 * calls / (start.elapsed_time(end) / 1000)


def train_cfg(params: dict[str, Any], device: str, **overrides: Any):
    from siamese.config import TrainConfig

    train = {**params["train"], "device": device, **overrides}
    return TrainConfig.parse({**params, "train": train})


def koch_step(params: dict[str, Any], data, device: str, batch: int, calls: int) -> dict:
    """Pairs/s of train.py's step on Koch's network, bf16 autocast on CUDA, as its loop runs it:
    with next_batch (indexing + distortions on the device) and on one fixed batch (model only)."""
    import numpy as np
    import torch

    from siamese.episodes import next_batch
    from tools.bench.trainparts import pair_flops, step_runner

    cfg = train_cfg(params, device, objective="pairs", batch_pairs=batch)
    dev = torch.device(device)
    step, net, _ = step_runner(cfg, data, dev)
    full = timed(step, calls, 2, device)
    fixed = next_batch(cfg, data, np.random.default_rng(1), torch.Generator().manual_seed(1), dev)
    model_step, _, _ = step_runner(cfg, data, dev, load=lambda: fixed)
    model_only = timed(model_step, calls, 1, device)
    return {"batch": batch, "pairs_per_s": batch / full,
            "model_only_pairs_per_s": batch / model_only,
            "flop_per_pair": pair_flops(net.cpu().float(), cfg.image_size)}


def profile_step_s(params: dict[str, Any], data, device: str) -> float:
    """Seconds of one training step of Koch's network (its own objective), median of 5."""
    import torch

    from tools.bench.trainparts import step_runner

    step, _, _ = step_runner(train_cfg(params, device), data, torch.device(device))
    return timed(step, 5, 2, device)


def evaluate(device: str, params: dict[str, Any]) -> dict[str, Any]:
    """20-way accuracy of models/model.pt on the evaluation and Lake trials (95% Wilson CI),
    with the evaluate stage's scoring (each image embedded once, then the head)."""
    import numpy as np
    import pandas as pd

    from siamese import paths
    from siamese.images import load_pixels
    from siamese.model import load_model
    from siamese.scoring import credit, table_scores
    from siamese.stats import accuracy_entry
    from tasks.evaluate import embedding_table, needed_keys

    model, meta = load_model(paths.MODEL, device)
    pixels = load_pixels(paths.PIXELS)
    trials = paths.read_manifest(paths.TRIALS, "trials")
    out: dict[str, Any] = {"step": int(meta["step"]), "valid_accuracy": meta["valid_accuracy"]}
    no_pairs = pd.DataFrame({"left_id": [], "right_id": []}, dtype="int64")
    for trial_set in ("evaluation", "lake"):
        chosen = trials[trials["trial_set"] == trial_set]
        if chosen.empty:
            continue
        n_way = int(chosen["n_way"].max())
        group = chosen[chosen["n_way"] == n_way].sort_values("trial_id")
        start = time.perf_counter()
        table_keys = needed_keys(group, no_pairs)
        table = embedding_table(model, pixels, table_keys, device,
                                int(params["evaluate"]["batch_size"]))
        scores = table_scores(table, table_keys, model, group)
        got = credit(scores, group["answer"].to_numpy(dtype=np.int64))
        out[f"{trial_set} {n_way}-way"] = {
            **accuracy_entry(got), "seconds": round(time.perf_counter() - start, 2)}
    return out


# --- the run ------------------------------------------------------------------------------------


def run(zips: Path, budget_s: float, smoke: bool, out_dir: Path | None,
        work: Path) -> dict[str, Any]:
    """Everything, in the scratch folder `work` (the data, the checkpoints)."""
    started = time.monotonic()
    import torch

    from siamese import paths
    from siamese.episodes import load_data
    from siamese.images import load_pixels  # noqa: F401  (fails early if the tree is broken)
    from tasks import train

    device = "cpu" if smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("tools.bench.gpu: no CUDA device here (use --smoke to run on the CPU)")
    os.chdir(work)
    params = build_params(smoke)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__, "smoke": smoke,
        "not_installed": [name for name in OPTIONAL if importlib.util.find_spec(name) is None],
        "data_stages_s": build_data(params, zips),
    }
    peak = matmul_peak(device, 256 if smoke else 8192, 2 if smoke else 20)
    result["bf16_matmul_tflops"] = round(peak / 1e12, 1 if not smoke else 4)
    data = load_data(train_cfg(params, device), torch.device(device))
    steps = [koch_step(params, data, device, b, 2 if smoke else 10)
             for b in ((2,) if smoke else (128, 512))]
    for s in steps:
        s["fraction_of_peak"] = round(s["pairs_per_s"] * s["flop_per_pair"] / peak, 3)
        s["model_only_fraction_of_peak"] = round(
            s["model_only_pairs_per_s"] * s["flop_per_pair"] / peak, 3)
        s["fraction_of_790_tflops"] = round(s["pairs_per_s"] * s["flop_per_pair"]
                                            / H200_BF16_FLOPS, 3)
    result["koch_step"] = steps
    per_step = profile_step_s(params, data, device)
    del data
    if device == "cuda":
        torch.cuda.empty_cache()
    train_s = max(30.0, budget_s - (time.monotonic() - started) - EVAL_RESERVE_S)
    # Steps that fit, so that the cosine schedule ends with the time (max_minutes: a guard);
    # a tenth is kept back for the validations.
    planned = 2 if smoke else max(2, int(0.9 * train_s / per_step))
    # Validate ~8 times (each also writes the resumable state: ~0.5 GB for Koch's net).
    profile = {**params["train"], "device": device, "steps": planned,
               "eval_every": max(2, planned // 8) if not smoke else 2,
               "max_minutes": round(train_s / 60, 2)}
    params = {**params, "train": profile}
    start = time.monotonic()
    train.run(params, device=device)
    shown = ("arch", "image_size", "objective", "optimizer", "lr", "steps", "eval_every")
    result["train"] = {"step_s": round(per_step, 4), "seconds": round(time.monotonic() - start, 1),
                       "profile": {k: profile[k] for k in shown}}
    summary = paths.TRAIN_LIVE / "metrics.json"
    if summary.exists():
        result["train"]["summary"] = json.loads(summary.read_text())
    result["evaluate"] = evaluate(device, params)
    result["total_s"] = round(time.monotonic() - started, 1)
    write(result, out_dir)
    return result


def table(r: dict[str, Any]) -> str:
    rows = [("device", r["device"]), ("data stages (s)", json.dumps(r["data_stages_s"])),
            ("bf16 matmul peak (TFLOP/s)", r["bf16_matmul_tflops"])]
    for s in r["koch_step"]:
        rows.append((f"Koch step bf16, batch {s['batch']}: pairs/s (model only)",
                     f"{s['pairs_per_s']:,.0f} ({s['model_only_pairs_per_s']:,.0f})"))
        rows.append((f"  fraction of the measured peak at {s['flop_per_pair'] / 1e9:.2f} "
                     "GFLOP/pair (model only); of 790 TFLOP/s",
                     f"{s['fraction_of_peak']} ({s['model_only_fraction_of_peak']}); "
                     f"{s['fraction_of_790_tflops']}"))
    rows.append(("Koch's network trained (s, steps)",
                 f"{r['train']['seconds']} s, {r['train']['profile']['steps']} steps planned"))
    for key, e in r["evaluate"].items():
        if isinstance(e, dict):
            rows.append((f"{key} accuracy [95% CI]", f"{e['accuracy']:.3f} {e['ci95']}"))
    rows.append(("total (s)", r["total_s"]))
    return "\n".join(["| measure | value |", "|---|---|"]
                     + [f"| {a} | {b} |" for a, b in rows]) + "\n"


def write(result: dict[str, Any], out_dir: Path | None) -> None:
    text = table(result)
    print(text)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "gpu.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
        (out_dir / "gpu.md").write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.gpu",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--zips", type=Path, required=True,
                        help="folder with the three Omniglot zips and SHA256SUMS")
    parser.add_argument("--budget-s", type=float, default=330.0,
                        help="seconds for the whole script (training takes what is left)")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes (for the tests)")
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT") or None)
    args = parser.parse_args(argv)
    out = args.out.resolve() if args.out else None
    here = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="siamese-gpu-") as work:
        try:
            run(args.zips.resolve(), args.budget_s, args.smoke, out, Path(work))
        finally:
            os.chdir(here)
    return 0


if __name__ == "__main__":
    sys.exit(main())
