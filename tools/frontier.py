"""`siamese frontier`: accuracy on held-out alphabets against training compute, one point per
DVC experiment.

Reads the experiments of this repository through DVC's Python API (`dvc.api.exp_show`: each
one's params and metrics) and the CPU seconds each run took (a TSV of name and cpu_seconds that
the runner writes, as `/usr/bin/time` measured it: the experiment's training and evaluate).
Writes, in docs/frontier/ (or `out`): points.csv, the picture holdout.png (holdout 20-way
accuracy against CPU-minutes, one line per setting) and the table table.md, where a setting
run with several seeds at one budget gets a row of means and standard deviations too.
The choice reads the holdout columns only; the test columns stand beside them, for the record.
"""

import csv
import statistics
from pathlib import Path
from typing import Any

from siamese.atomic import atomic_path, write_text
from siamese.errors import PipelineError

OUT = Path("docs/frontier")
SETTING = ("train.width", "train.image_size", "train.rotations", "train.head")
COLUMNS = ("experiment", *SETTING, "train.steps", "train.seed", "split.holdout_alphabets",
           "cpu_minutes", "holdout.20-way.accuracy", "holdout.5-way.accuracy",
           "evaluation.20-way.accuracy", "lake.20-way.accuracy")


def read_times(path: Path) -> dict[str, float]:
    """experiment name -> CPU seconds, from a TSV of `name<TAB>cpu_seconds` lines."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise PipelineError(f"{path}: cannot read the run times ({e.strerror})") from None
    times = {}
    for number, line in enumerate(lines, 1):
        name, _, seconds = line.partition("\t")
        try:
            times[name] = float(seconds)
        except ValueError:
            raise PipelineError(f"{path}:{number}: expected name<TAB>cpu_seconds, got "
                                f"{line!r}") from None
    return times


def experiment_rows(repo: Path, times: dict[str, float]) -> list[dict[str, Any]]:
    """One row per named experiment with a time: its setting, budget and accuracies."""
    import dvc.api

    rows = []
    for exp in dvc.api.exp_show(repo=str(repo), revs=baselines(repo, set(times)) or None):
        name = exp.get("Experiment")
        if name not in times:
            continue
        row = {"experiment": name, "cpu_minutes": round(times[name] / 60, 1)}
        row.update({key: exp.get(key) for key in COLUMNS if key not in row})
        rows.append(row)
    missing = sorted(set(times) - {r["experiment"] for r in rows})
    if missing:
        raise PipelineError(f"no DVC experiment named {', '.join(missing)} in {repo}")
    return sorted(rows, key=lambda r: (setting(r), r["train.steps"], r["train.seed"]))


def baselines(repo: Path, names: set[str]) -> list[str]:
    """The commits the named experiments were run from (refs/exps/AB/CDEF.../NAME), so that
    experiments of earlier baselines are read too."""
    import subprocess

    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=repo,
                          capture_output=True, text=True).stdout.split()
    found = {"".join(ref.split("/")[2:4]) for ref in refs if ref.rsplit("/", 1)[-1] in names}
    return sorted(found)


def setting(row: dict[str, Any]) -> str:
    width, size, rotations, head = (row[k] for k in SETTING)
    return f"width {width:.0f}, {size:.0f} px, rotations {rotations:.0f}, {head}"


ACCURACIES = ("holdout.20-way.accuracy", "holdout.5-way.accuracy", "evaluation.20-way.accuracy",
              "lake.20-way.accuracy")


def pct(value: Any) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def mean_sd(values: list[float]) -> str:
    return f"{pct(statistics.mean(values))} ± {pct(statistics.stdev(values))}"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| setting | steps | seed | CPU-min | holdout 20-way | holdout 5-way | "
             "evaluation 20-way | Lake 20-way |", "|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((setting(r), r["train.steps"]), []).append(r)
    for (name, steps), group in groups.items():
        for r in group:
            holdout, *others = (pct(r[key]) for key in ACCURACIES)
            lines.append(f"| {name} | {steps:.0f} | {r['train.seed']:.0f} | {r['cpu_minutes']} "
                         f"| **{holdout}** | {' | '.join(others)} |")
        if len(group) > 1:
            cells = [mean_sd([r[key] for r in group]) for key in ACCURACIES]
            lines.append(f"| {name} | {steps:.0f} | mean ± sd of {len(group)} | | "
                         f"**{cells[0]}** | {' | '.join(cells[1:])} |")
    return "\n".join(lines) + "\n"


def draw(rows: list[dict[str, Any]], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name in dict.fromkeys(setting(r) for r in rows):
        points = sorted((r["cpu_minutes"], 100 * r["holdout.20-way.accuracy"])
                        for r in rows if setting(r) == name)
        ax.plot(*zip(*points, strict=True), marker="o", label=name)
    ax.set_xscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel("CPU-minutes of the run (training and evaluate, 2 threads)")
    ax.set_ylabel("holdout 20-way accuracy (%)")
    ax.set_title("Held-out alphabets against compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def run(times_file: Path, repo: Path = Path("."), out: Path = OUT) -> str:
    rows = experiment_rows(repo, read_times(times_file))
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "points.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    draw(rows, out / "holdout.png")
    table = markdown(rows)
    write_text(table, out / "table.md")
    return table
