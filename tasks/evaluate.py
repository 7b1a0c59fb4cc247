"""`siamese evaluate`: n-way one-shot accuracy, verification accuracy, report and pictures.

Reads the best checkpoint (models/model.pt), the packed pixels and the trials and pairs
manifests; writes reports/metrics.json (DVC metrics) and the folder reports/evaluate:
predictions.parquet (one row per trial), per_alphabet.csv and .png, pictures/ (a few trials
drawn) and report.md. Accuracy gives a trial 1/k credit when its answer is among k tied top
scores, so a model that cannot tell the candidates apart scores chance, 1/n.
"""

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from siamese import paths
from siamese.atomic import atomic_path, write_json, write_parquet, write_text
from siamese.config import EvaluateConfig
from siamese.errors import PipelineError
from siamese.images import load_pixels, to_tensor
from siamese.model import load_model
from siamese.scoring import credit, embed_images, trial_scores

REPORT_DIR = paths.REPORTS / "evaluate"
Z95 = 1.959963984540054  # two-sided 95% normal quantile
TRIAL_COLUMNS = (
    "trial_set", "n_way", "trial_id", "alphabet", "query_id", "candidate_ids", "answer",
)


def read_config(params: dict[str, Any]) -> EvaluateConfig:
    return EvaluateConfig.parse(params)


# --- statistics -------------------------------------------------------------------------------


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (successes may be fractional: tie credit)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy_entry(credits: np.ndarray, count_key: str = "trials") -> dict[str, Any]:
    """{"accuracy", "ci95": [lo, hi], count_key}, fractions rounded to 4 digits."""
    n = len(credits)
    lo, hi = wilson_interval(float(np.sum(credits)), n)
    accuracy = float(np.mean(credits)) if n else 0.0
    return {"accuracy": round(accuracy, 4), "ci95": [round(lo, 4), round(hi, 4)], count_key: n}


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties averaged); None without both classes."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


# --- inputs -----------------------------------------------------------------------------------


def check_trials(trials: pd.DataFrame, n_images: int, path: Path) -> None:
    """Every trial must name known images, n_way candidates and an answer among them."""
    missing = [c for c in TRIAL_COLUMNS if c not in trials.columns]
    if missing:
        raise PipelineError(f"{path}: missing columns {', '.join(missing)}")
    if len(trials) == 0:
        raise PipelineError(f"{path}: holds no trials; check trials.n_way and the split")
    for row in trials.itertuples(index=False):
        ids = np.append(np.asarray(row.candidate_ids, dtype=np.int64), row.query_id)
        where = f"{path}: trial {row.trial_set} {row.n_way}-way #{row.trial_id}"
        if ids.min() < 0 or ids.max() >= n_images:
            bad = ids[(ids < 0) | (ids >= n_images)].tolist()
            raise PipelineError(
                f"{where} names unknown image ids {bad} (the packed pixels hold {n_images} "
                "images); are the trials and the pixels from the same index run?"
            )
        if len(ids) - 1 != row.n_way or not 0 <= row.answer < row.n_way:
            raise PipelineError(
                f"{where} has {len(ids) - 1} candidates and answer {row.answer}; "
                f"expected {row.n_way} candidates and an answer in 0..{row.n_way - 1}"
            )


def check_pair_ids(pairs: pd.DataFrame, n_images: int, path: Path) -> None:
    missing = [c for c in ("left_id", "right_id", "same", "role") if c not in pairs.columns]
    if missing:
        raise PipelineError(f"{path}: missing columns {', '.join(missing)}")
    ids = np.concatenate([pairs["left_id"].to_numpy(), pairs["right_id"].to_numpy()])
    bad = ids[(ids < 0) | (ids >= n_images)]
    if len(bad):
        raise PipelineError(f"{path}: names unknown image ids (e.g. {bad[:5].tolist()}; the "
                            f"packed pixels hold {n_images} images)")


# --- scoring ----------------------------------------------------------------------------------


class EmbeddingTable(torch.nn.Module):
    """The model seen by scoring.trial_scores when its 'images' are embeddings already.

    Each image is embedded once (embedding_table) for all trial sets and the pairs; trial
    scoring, then, is the head alone: embed is the identity, score is the model's.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = getattr(model, "module", model)
        self.head = self.model.head
        self.dim = self.model.dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def score(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.model.score(a, b)


def embedding_table(model, pixels: np.ndarray, ids: np.ndarray, device: torch.device | str,
                    batch_size: int, chunk: int = 4096) -> torch.Tensor:
    """Embeddings [N, D] indexed by image_id: rows `ids` computed (preprocessed as in training,
    at the model's image size), the others zero."""
    net = getattr(model, "module", model)
    table = torch.zeros(len(pixels), net.dim)
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        images = to_tensor(pixels[part], net.image_size)
        table[torch.from_numpy(part)] = embed_images(model, images, np.arange(len(part)), device,
                                                     batch_size)
    return table


def needed_ids(trials: pd.DataFrame, pairs: pd.DataFrame) -> np.ndarray:
    """Every image_id that a trial or a pair names, once."""
    return np.unique(np.concatenate([
        trials["query_id"].to_numpy(dtype=np.int64),
        np.concatenate(trials["candidate_ids"].map(np.asarray).tolist()).astype(np.int64),
        pairs["left_id"].to_numpy(dtype=np.int64),
        pairs["right_id"].to_numpy(dtype=np.int64),
    ]))


def predict_trials(table: torch.Tensor, model, trials: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: the predicted candidate (first top score), credit and all scores."""
    frames = []
    scorer = EmbeddingTable(model)
    for (trial_set, n_way), group in trials.groupby(["trial_set", "n_way"], sort=True):
        group = group.sort_values("trial_id")
        scores = trial_scores(scorer, table, group, "cpu", batch_size=len(table))
        answers = group["answer"].to_numpy(dtype=np.int64)
        frames.append(pd.DataFrame({
            "trial_set": trial_set,
            "n_way": np.int64(n_way),
            "trial_id": group["trial_id"].to_numpy(dtype=np.int64),
            "alphabet": group["alphabet"].to_numpy(),
            "query_id": group["query_id"].to_numpy(dtype=np.int64),
            "predicted": scores.argmax(axis=1).astype(np.int64),
            "answer": answers,
            "credit": credit(scores, answers),
            "scores": list(scores.astype(np.float32)),
        }))
    return pd.concat(frames, ignore_index=True)


def verify_pairs(table: torch.Tensor, model, pairs: pd.DataFrame) -> dict[str, Any]:
    """Same/different accuracy (sigmoid(logit) > 0.5) and ROC AUC on the given pairs."""
    if len(pairs) == 0:
        return {"pairs": 0}
    left = torch.tensor(pairs["left_id"].to_numpy(dtype=np.int64))
    right = torch.tensor(pairs["right_id"].to_numpy(dtype=np.int64))
    with torch.no_grad():
        logits = model.score(table[left], table[right]).numpy()
    same = pairs["same"].to_numpy(dtype=bool)
    entry = accuracy_entry((logits > 0) == same, count_key="pairs")
    auc = roc_auc(logits, same)
    if auc is not None:
        entry["auc"] = round(auc, 4)
    return entry


def summarize(predictions: pd.DataFrame, verification: dict[str, Any]) -> dict[str, Any]:
    """metrics.json: {trial_set: {"<n>-way": accuracy entry}, ..., "verification": {...}}."""
    metrics: dict[str, Any] = {}
    for (trial_set, n_way), group in predictions.groupby(["trial_set", "n_way"], sort=True):
        metrics.setdefault(trial_set, {})[f"{n_way}-way"] = accuracy_entry(group["credit"])
    metrics["verification"] = verification
    return metrics


def per_alphabet(predictions: pd.DataFrame) -> pd.DataFrame:
    rows = []
    keys = ["trial_set", "n_way", "alphabet"]
    for (trial_set, n_way, alphabet), group in predictions.groupby(keys, sort=True):
        entry = accuracy_entry(group["credit"])
        rows.append({"trial_set": trial_set, "n_way": n_way, "alphabet": alphabet,
                     "trials": entry["trials"], "accuracy": entry["accuracy"],
                     "ci95_low": entry["ci95"][0], "ci95_high": entry["ci95"][1]})
    return pd.DataFrame(rows)


def choose_pictures(predictions: pd.DataFrame, count: int, seed: int) -> pd.DataFrame:
    """`count` trials of each trial set at its largest n-way, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    chosen = []
    for _, group in predictions.groupby("trial_set", sort=True):
        group = group[group["n_way"] == group["n_way"].max()]
        picks = np.sort(rng.choice(len(group), size=min(count, len(group)), replace=False))
        chosen.append(group.iloc[picks])
    return pd.concat(chosen, ignore_index=True)


# --- pictures and report ----------------------------------------------------------------------


def draw_trial(row: Any, candidates: np.ndarray, pixels: np.ndarray, character: pd.Series):
    """The query above its candidates, each captioned with its logit; the prediction framed
    green (right) or red (wrong), the truth framed blue.

    One mosaic image in one axes: a grid of subplots costs about a second a picture.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    size = pixels.shape[1]
    cols = min(len(candidates), 10)
    rows = 1 + math.ceil(len(candidates) / cols)
    cell_w, cell_h = size + 24, size + 36  # room for the frame and a caption above
    right = row.predicted == row.answer
    cells = [(0, row.query_id, "query", "black")]
    for i, image_id in enumerate(candidates):
        colour, mark = "lightgrey", ""
        if i == row.predicted:
            colour, mark = ("green" if right else "red"), " predicted"
        elif i == row.answer:
            colour, mark = "blue", " truth"
        cells.append((cols + i, image_id, f"{row.scores[i]:.2f}{mark}", colour))

    canvas = np.zeros((rows * cell_h, cols * cell_w), dtype=bool)
    fig = Figure(figsize=(cols * cell_w / 80, rows * cell_h / 80 + 0.4), dpi=80)
    ax = fig.add_axes((0, 0, 1, rows * cell_h / (rows * cell_h + 32)))
    ax.axis("off")
    for k, image_id, caption, colour in cells:
        y, x = (k // cols) * cell_h + 28, (k % cols) * cell_w + 12
        canvas[y : y + size, x : x + size] = pixels[image_id]
        ax.text(x + size / 2, y - 8, caption, ha="center", va="bottom", fontsize=9)
        ax.add_patch(Rectangle((x - 5, y - 5), size + 9, size + 9, fill=False, edgecolor=colour,
                               linewidth=1 if colour == "lightgrey" else 3))
    ax.imshow(canvas, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    verdict = "right" if right else "wrong"
    fig.suptitle(f"{row.trial_set} {row.n_way}-way trial {row.trial_id}: {row.alphabet}, "
                 f"{character.get(row.query_id, '')} ({verdict})", fontsize=10)
    return fig


def draw_per_alphabet(table: pd.DataFrame):
    """One panel per trial set (its largest n-way): accuracy per alphabet with 95% CIs."""
    from matplotlib.figure import Figure

    largest = table.groupby("trial_set")["n_way"].transform("max") == table["n_way"]
    panels = list(table[largest].groupby("trial_set", sort=True))
    tallest = max(len(group) for _, group in panels)
    fig = Figure(figsize=(5.5 * len(panels), 1.2 + 0.22 * tallest), dpi=80, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (trial_set, group) in zip(axes, panels, strict=True):
        group = group.sort_values("accuracy")
        errors = [group["accuracy"] - group["ci95_low"], group["ci95_high"] - group["accuracy"]]
        ax.barh(group["alphabet"], group["accuracy"], xerr=errors, color="tab:blue",
                error_kw={"elinewidth": 0.8, "ecolor": "grey"})
        n_way = int(group["n_way"].iloc[0])
        ax.axvline(1 / n_way, color="black", linestyle="--", linewidth=0.8, label="chance")
        ax.set_xlim(0, 1)
        ax.set_title(f"{trial_set}, {n_way}-way", fontsize=10)
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
        "| trial set | n-way | trials | accuracy | 95% CI (Wilson) | chance |",
        "|---|---|---|---|---|---|",
    ]
    for trial_set, n, entry in accuracy_rows(metrics):
        lo, hi = entry["ci95"]
        lines.append(f"| {trial_set} | {n} | {entry['trials']} | {entry['accuracy']:.1%} | "
                         f"[{lo:.1%}, {hi:.1%}] | {1 / n:.1%} |")
    lines += ["", "A trial whose answer is among k tied top scores counts 1/k.", ""]
    lines += ["## Verification (valid pairs)", "", verification_line(metrics["verification"]), "",
              "The decision is P(same) > 0.5; the train stage sets the head's bias on the train "
              "pairs (an objective over a trial's candidates leaves it free). The AUC needs no "
              "threshold.", ""]
    lines += ["## Per alphabet", "", "![accuracy per alphabet](per_alphabet.png)", "",
              "Numbers: [per_alphabet.csv](per_alphabet.csv); every trial: predictions.parquet.",
              "", "## Example trials", "",
              "Green frame: a right prediction; red: a wrong one; blue: the truth. Numbers: "
              "the head's logit for each candidate (the highest is the prediction).", ""]
    lines += [f"![{name}]({name})" for name in pictures]
    return "\n".join(lines) + "\n"


def accuracy_rows(metrics: dict[str, Any]) -> list[tuple[str, int, dict[str, Any]]]:
    """(trial_set, n, entry) of metrics.json: valid, evaluation, lake, then any other set;
    the largest n first within a set."""
    known = ("valid", "evaluation", "lake")
    rows = [(trial_set, int(way.removesuffix("-way")), entry)
            for trial_set, ways in metrics.items() if trial_set != "verification"
            for way, entry in ways.items()]
    order = {s: known.index(s) if s in known else len(known) for s, _, _ in rows}
    return sorted(rows, key=lambda r: (order[r[0]], r[0], -r[1]))


def summary_line(metrics: dict[str, Any]) -> str:
    """One line for the log: each trial set's largest n-way, then verification."""
    parts, seen = [], set()
    for trial_set, n, entry in accuracy_rows(metrics):
        if trial_set not in seen:
            seen.add(trial_set)
            lo, hi = entry["ci95"]
            parts.append(f"{trial_set} {n}-way {entry['accuracy']:.1%} [{lo:.1%}, {hi:.1%}]")
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
    """{"pictures/<set>-<n>way-trial<id>.png": figure} for the chosen trials."""
    candidates = trials.set_index(["trial_set", "n_way", "trial_id"])["candidate_ids"]
    figures = {}
    for row in chosen.itertuples(index=False):
        ids = np.asarray(candidates[(row.trial_set, row.n_way, row.trial_id)])
        name = f"pictures/{row.trial_set}-{row.n_way}way-trial{row.trial_id:04d}.png"
        figures[name] = draw_trial(row, ids, pixels, character)
    return figures


def write_report_dir(target: Path, predictions: pd.DataFrame, alphabets: pd.DataFrame,
                     figures: dict[str, Any], report: str) -> None:
    """Build the whole folder under a temporary name, then swap it in (atomic as a whole)."""
    with atomic_path(target, is_dir=True) as tmp:
        write_parquet(predictions, tmp / "predictions.parquet")
        write_text(alphabets.to_csv(index=False), tmp / "per_alphabet.csv")
        for name, fig in figures.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(tmp / name, metadata={"Software": None})
        write_text(report, tmp / "report.md")


def read_dataset(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run the index stage first") from None
    except ValueError as e:
        raise PipelineError(f"{path}: not valid JSON ({e})") from None


def run(params: dict[str, Any]) -> dict[str, Any]:
    """Evaluate models/model.pt on every trial set and the valid pairs; returns the metrics."""
    cfg = read_config(params)
    model, meta = load_model(paths.MODEL, cfg.device)
    pixels = load_pixels(paths.PIXELS)
    trials = paths.read_manifest(paths.TRIALS, "trials")
    check_trials(trials, len(pixels), paths.TRIALS)
    pairs = paths.read_manifest(paths.PAIRS, "pairs")
    check_pair_ids(pairs, len(pixels), paths.PAIRS)
    dataset = read_dataset(paths.DATASET)
    index = paths.read_manifest(paths.IMAGES, "index")
    character = index["character"].set_axis(index["image_id"])

    valid_pairs = pairs[pairs["role"] == "valid"]
    ids = needed_ids(trials, valid_pairs)
    table = embedding_table(model, pixels, ids, cfg.device, cfg.batch_size)
    model.cpu()  # scoring from the table: only the head runs, on the CPU
    predictions = predict_trials(table, model, trials)
    verification = verify_pairs(table, model, valid_pairs)
    metrics = summarize(predictions, verification)

    alphabets = per_alphabet(predictions)
    chosen = choose_pictures(predictions, cfg.pictures, cfg.seed)
    pictures = draw_pictures(chosen, trials, pixels, character)
    report = report_markdown(metrics, meta, dataset, list(pictures))
    figures = {"per_alphabet.png": draw_per_alphabet(alphabets), **pictures}
    write_report_dir(REPORT_DIR, predictions, alphabets, figures, report)
    write_json(metrics, paths.METRICS)
    print(f"evaluate: {summary_line(metrics)}; report {REPORT_DIR / 'report.md'}")
    return metrics
