"""The evaluation's report: the pictures of trials, the per-alphabet chart, report.md and the
summary line of the log, from the predictions and the metrics of tasks/evaluate.py."""

import math
import re
from typing import Any

import numpy as np
import pandas as pd

from siamese import paths

WAY_KEY = re.compile(r"(\d+)-way(?:-(\d+)-shot)?")


def way_key(n_way: int, k_shot: int) -> str:
    """metrics.json's key of n-way k-shot accuracy: "20-way" (one-shot), "20-way-5-shot"."""
    return f"{n_way}-way" if k_shot == 1 else f"{n_way}-way-{k_shot}-shot"


def parse_way_key(key: str) -> tuple[int, int]:
    """(n, k) of a `way_key`."""
    match = WAY_KEY.fullmatch(key)
    if match is None:
        raise ValueError(f"not a way key: {key!r}")
    n, k = match.groups()
    return int(n), int(k or 1)


def file_label(n_way: int, k_shot: int) -> str:
    """The same in file names: "20way", "20way-5shot"."""
    return f"{n_way}way" if k_shot == 1 else f"{n_way}way-{k_shot}shot"


def headline(table: pd.DataFrame) -> pd.Series:
    """Rows of each trial set's largest n-way, at its fewest shots there (pictures, chart)."""
    largest = table.groupby("trial_set")["n_way"].transform("max") == table["n_way"]
    fewest = table[largest].groupby("trial_set")["k_shot"].transform("min")
    return largest & (table["k_shot"] == fewest.reindex(table.index))


def draw_trial(row: Any, candidates: np.ndarray, turns: np.ndarray, pixels: np.ndarray,
               character: pd.Series):
    """The query above its candidates (one image per class, turned by the class's turns), each
    captioned with its logit; the prediction framed green (right) or red (wrong), the truth
    framed blue.

    One mosaic image in one axes: a grid of subplots costs about a second a picture.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    size = pixels.shape[1]
    cols = min(len(candidates), 10)
    rows = 1 + math.ceil(len(candidates) / cols)
    cell_w, cell_h = size + 24, size + 36  # room for the frame and a caption above
    right = row.predicted == row.answer
    cells = [(0, row.query_id, turns[row.answer], "query", "black")]
    for i, image_id in enumerate(candidates):
        colour, mark = "lightgrey", ""
        if i == row.predicted:
            colour, mark = ("green" if right else "red"), " predicted"
        elif i == row.answer:
            colour, mark = "blue", " truth"
        cells.append((cols + i, image_id, turns[i], f"{row.scores[i]:.2f}{mark}", colour))

    canvas = np.zeros((rows * cell_h, cols * cell_w), dtype=bool)
    fig = Figure(figsize=(cols * cell_w / 80, rows * cell_h / 80 + 0.4), dpi=80)
    ax = fig.add_axes((0, 0, 1, rows * cell_h / (rows * cell_h + 32)))
    ax.axis("off")
    for k, image_id, turn, caption, colour in cells:
        y, x = (k // cols) * cell_h + 28, (k % cols) * cell_w + 12
        canvas[y : y + size, x : x + size] = np.rot90(pixels[image_id], turn)
        ax.text(x + size / 2, y - 8, caption, ha="center", va="bottom", fontsize=9)
        ax.add_patch(Rectangle((x - 5, y - 5), size + 9, size + 9, fill=False, edgecolor=colour,
                               linewidth=1 if colour == "lightgrey" else 3))
    ax.imshow(canvas, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    verdict = "right" if right else "wrong"
    fig.suptitle(f"{row.trial_set} {way_key(row.n_way, row.k_shot)} trial {row.trial_id}: "
                 f"{row.alphabet}, "
                 f"{character.get(row.query_id, '')} ({verdict})", fontsize=10)
    return fig


def draw_per_alphabet(table: pd.DataFrame):
    """One panel per trial set (its `headline` rows): accuracy per alphabet with 95% CIs."""
    from matplotlib.figure import Figure

    panels = list(table[headline(table)].groupby("trial_set", sort=True))
    tallest = max(len(group) for _, group in panels)
    fig = Figure(figsize=(5.5 * len(panels), 1.2 + 0.22 * tallest), dpi=80, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (trial_set, group) in zip(axes, panels, strict=True):
        group = group.sort_values("accuracy")
        errors = [group["accuracy"] - group["ci95_low"], group["ci95_high"] - group["accuracy"]]
        ax.barh(group["alphabet"], group["accuracy"], xerr=errors, color="tab:blue",
                error_kw={"elinewidth": 0.8, "ecolor": "grey"})
        n_way, k_shot = int(group["n_way"].iloc[0]), int(group["k_shot"].iloc[0])
        ax.axvline(1 / n_way, color="black", linestyle="--", linewidth=0.8, label="chance")
        ax.set_xlim(0, 1)
        ax.set_title(f"{trial_set}, {way_key(n_way, k_shot)}", fontsize=10)
        ax.set_xlabel("accuracy (95% Wilson CI)")
        ax.tick_params(axis="y", labelsize=7)
        ax.legend(loc="lower right", fontsize=7)
    return fig


def report_markdown(metrics: dict[str, Any], meta: dict[str, Any], dataset: dict[str, Any],
                    pictures: list[str]) -> str:
    lines = [
        "# Evaluation",
        "",
        f"Model `{paths.MODEL}`: arch {meta['arch']} {meta['model_options']}, image size "
        f"{meta['image_size']}, step {meta['step']}, validation accuracy at selection "
        f"{meta['valid_accuracy']:.4f}.",
        f"Data: fingerprint `{dataset.get('fingerprint')}`, {dataset.get('images')} images.",
        "",
        "## n-way one-shot accuracy",
        "",
        "| trial set | n-way | trials | accuracy | 95% CI (Wilson) | 95% CI (alphabets) | chance |",
        "|---|---|---|---|---|---|---|",
    ]
    for trial_set, n, k, entry in accuracy_rows(metrics):
        lo, hi = entry["ci95"]
        a_lo, a_hi = entry["ci95_alphabets"]
        way = n if k == 1 else f"{n}, {k}-shot"
        lines.append(f"| {trial_set} | {way} | {entry['trials']} | {entry['accuracy']:.1%} | "
                     f"[{lo:.1%}, {hi:.1%}] | [{a_lo:.1%}, {a_hi:.1%}] over "
                     f"{entry['alphabets']} | {1 / n:.1%} |")
    lines += ["", "A trial whose answer is among k tied top scores counts 1/k. The Wilson "
              "interval treats trials as independent; the alphabets' interval is a bootstrap "
              "that resamples whole alphabets (their trials share characters, and Lake's runs "
              "their candidates), so it is the one to read across models.", ""]
    lines += ["## Verification (valid pairs)", "", verification_line(metrics["verification"]), "",
              "The decision is P(same) > 0.5; the train stage sets the head's bias on the train "
              "pairs (an objective over a trial's candidates leaves it free). The AUC needs no "
              "threshold; the ROC curve: [roc.csv](../plots/roc.csv) (`dvc plots show`).", ""]
    lines += ["## Per alphabet", "", "![accuracy per alphabet](per_alphabet.png)", "",
              "Numbers: [per_alphabet.csv](per_alphabet.csv); every trial: predictions.parquet.",
              "", "## Example trials", "",
              "Green frame: a right prediction; red: a wrong one; blue: the truth. Numbers: "
              "the head's logit for each candidate (the highest is the prediction).", ""]
    lines += [f"![{name}]({name})" for name in pictures]
    return "\n".join(lines) + "\n"


def accuracy_rows(metrics: dict[str, Any]) -> list[tuple[str, int, int, dict[str, Any]]]:
    """(trial_set, n, k, entry) of metrics.json ("<n>-way" one-shot, "<n>-way-<k>-shot"):
    valid, holdout, evaluation, lake, then any other set; the largest n first within a set,
    then the fewest shots."""
    known = ("valid", "holdout", "evaluation", "lake")
    rows = [(trial_set, *parse_way_key(way), entry)
            for trial_set, ways in metrics.items() if trial_set != "verification"
            for way, entry in ways.items()]
    order = {s: known.index(s) if s in known else len(known) for s, _, _, _ in rows}
    return sorted(rows, key=lambda r: (order[r[0]], r[0], -r[1], r[2]))


def summary_line(metrics: dict[str, Any]) -> str:
    """One line for the log: each trial set's largest n-way, then verification."""
    parts, seen = [], set()
    for trial_set, n, k, entry in accuracy_rows(metrics):
        if trial_set not in seen:
            seen.add(trial_set)
            lo, hi = entry["ci95"]
            parts.append(f"{trial_set} {way_key(n, k)} {entry['accuracy']:.1%} "
                         f"[{lo:.1%}, {hi:.1%}]")
    if metrics["verification"].get("pairs"):
        parts.append(f"verification {metrics['verification']['accuracy']:.1%}")
    return ", ".join(parts)


def verification_line(entry: dict[str, Any]) -> str:
    if not entry.get("pairs"):
        return "No validation pairs in pairs.parquet."
    lo, hi = entry["ci95"]
    auc = f", ROC AUC {entry['auc']:.4f}" if "auc" in entry else ""
    return (f"{entry['pairs']} pairs: accuracy {entry['accuracy']:.1%} [{lo:.1%}, {hi:.1%}] "
            f"(same when P(same) > 0.5){auc}.")


def draw_pictures(chosen: pd.DataFrame, trials: pd.DataFrame, pixels: np.ndarray,
                  character: pd.Series) -> dict[str, Any]:
    """{"pictures/<set>-<n>way[-<k>shot]-trial<id>.png": figure} for the chosen trials, each
    class drawn by its first support image."""
    named = trials.set_index(["trial_set", "n_way", "k_shot", "trial_id"])
    figures = {}
    for row in chosen.itertuples(index=False):
        trial = named.loc[(row.trial_set, row.n_way, row.k_shot, row.trial_id)]
        ids = np.asarray(trial["candidate_ids"])[:: row.k_shot]
        name = (f"pictures/{row.trial_set}-{file_label(row.n_way, row.k_shot)}"
                f"-trial{row.trial_id:04d}.png")
        figures[name] = draw_trial(row, ids, np.asarray(trial["turns"]), pixels, character)
    return figures
