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

    commits = experiment_commits(repo, set(times))
    baselines = sorted({baseline for baseline, _ in commits.values()})
    rows: dict[str, dict[str, Any]] = {}
    for exp in dvc.api.exp_show(repo=str(repo), revs=baselines or None):
        name = times_name(exp, commits)
        if name is not None:
            rows[name] = {"experiment": short_name(name), "cpu_minutes": round(times[name] / 60, 1)}
            rows[name].update({key: exp.get(key) for key in COLUMNS if key not in rows[name]})
    missing = sorted(set(times) - set(rows))
    if missing:
        raise PipelineError(f"no DVC experiment named {', '.join(missing)} in {repo}")
    return sorted(rows.values(), key=lambda r: (setting(r), r["train.steps"], r["train.seed"]))


def experiment_commits(repo: Path, names: set[str]) -> dict[str, tuple[str, str]]:
    """name -> (its baseline commit, its own commit), for the named experiments found.

    A name resolves as `dvc exp apply NAME` resolves it: the one experiment of that name, or
    of several (one per baseline it was run from) the one of HEAD's baseline; any other name
    must be a full ref (refs/exps/AB/CDEF.../NAME). Experiments of earlier baselines are read
    too, but never two of one name: their seeds would be averaged together."""
    from dvc.repo import Repo
    from dvc.repo.experiments.exceptions import AmbiguousExpRefInfo
    from dvc.repo.experiments.utils import resolve_name

    with Repo(str(repo)) as dvc_repo:
        try:
            refs = resolve_name(dvc_repo.scm, sorted(names))
        except AmbiguousExpRefInfo as e:
            raise PipelineError(f"{' '.join(str(e).split())} (in the times file)") from None
        commits = {name: (ref.baseline_sha, dvc_repo.scm.get_ref(str(ref)))
                   for name, ref in refs.items() if ref is not None}
    return {name: (baseline, commit) for name, (baseline, commit) in commits.items() if commit}


def times_name(exp: dict[str, Any], commits: dict[str, tuple[str, str]]) -> str | None:
    """The name in the times file that resolved to the experiment of `exp` (a row of
    `dvc.api.exp_show`, whose rev is its commit, shortened), if one did."""
    rev = exp.get("rev") or "-"
    return next((name for name, (_, commit) in commits.items()
                 if exp.get("Experiment") == short_name(name) and commit.startswith(rev)), None)


def short_name(name: str) -> str:
    """An experiment's name, from its name or its full ref (refs/exps/AB/CDEF.../NAME)."""
    return name.rsplit("/", 1)[-1]


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
