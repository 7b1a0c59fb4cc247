"""`siamese evaluate`: n-way k-shot accuracy, verification accuracy, report and pictures.

Reads the best checkpoint (models/model.pt), the packed pixels and the trials and pairs
manifests; writes reports/metrics.json (DVC metrics), the folder reports/evaluate:
predictions.parquet (one row per trial), per_alphabet.csv and .png, pictures/ (a few trials
drawn) and report.md (drawn by siamese/evalreport.py), and the folder reports/plots: roc.csv
(the verification ROC curve) and per_alphabet/<set>-<n>way[-<k>shot].csv (per_alphabet.csv split
by trial set), the DVC plots of dvc.yaml, for `dvc plots diff`. The plots, like the metrics,
are kept by git, not the DVC cache: DVC reads them for every experiment it saves, built or
not. Trials are grouped by (trial_set, n_way, k_shot);
each image is embedded once per quarter turns it is seen at (embedding_table), then trial
scoring is the head alone (siamese.scoring.table_scores). Accuracy gives a
trial 1/k credit when its answer is among k tied top scores, so a model that cannot tell the
candidates apart scores chance, 1/n.
"""

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from siamese import cpu, paths
from siamese.atomic import atomic_path, write_json, write_parquet, write_text
from siamese.augment import random_affine, warp
from siamese.config import EvaluateConfig
from siamese.errors import PipelineError
from siamese.evalreport import (
    draw_per_alphabet,
    draw_pictures,
    file_label,
    headline,
    report_markdown,
    summary_line,
    way_key,
)
from siamese.images import TURNS, load_pixels, to_tensor
from siamese.model import SiameseNet, load_model
from siamese.scoring import credit, embed_images, keys, lookup, table_scores, trial_set_keys
from siamese.stats import accuracy_entry, alphabet_interval, roc_auc, roc_points

REPORT_DIR = paths.REPORTS / "evaluate"
TTA_PROBABILITY = 0.5  # evaluate.tta: each distortion component used with this probability
TRIAL_COLUMNS = (
    "trial_set", "n_way", "trial_id", "alphabet", "query_id", "candidate_ids", "answer",
    "k_shot", "turns",
)
GROUP = ["trial_set", "n_way", "k_shot"]  # trials scored and summarized together


def read_config(params: dict[str, Any]) -> EvaluateConfig:
    return EvaluateConfig.parse(params)


def check_head(params: dict[str, Any], model: SiameseNet) -> None:
    """The model must have the head that params.yaml: train.head names (when it names one): a
    model.pt trained with another head would report that head's accuracy as this one's."""
    train = params.get("train")
    wanted = train.get("head") if isinstance(train, dict) else None
    trained = model.options["head"]
    if wanted is not None and wanted != trained:
        raise PipelineError(
            f"{paths.MODEL} was trained with head {trained} but params.yaml: train.head is "
            f"{wanted}; rerun the train stage (dvc repro)")


# --- inputs -----------------------------------------------------------------------------------


def check_trials(trials: pd.DataFrame, n_images: int, path: Path) -> None:
    """Every trial must name known images, n_way * k_shot candidates, n_way quarter turns
    (0..3) and an answer among the n_way classes."""
    missing = [c for c in TRIAL_COLUMNS if c not in trials.columns]
    if missing:
        raise PipelineError(f"{path}: missing columns {', '.join(missing)}")
    if len(trials) == 0:
        raise PipelineError(f"{path}: holds no trials; check trials.n_way and the split")
    for row in trials.itertuples(index=False):
        ids = np.append(np.asarray(row.candidate_ids, dtype=np.int64), row.query_id)
        where = f"{path}: trial {row.trial_set} {way_key(row.n_way, row.k_shot)} #{row.trial_id}"
        if ids.min() < 0 or ids.max() >= n_images:
            bad = ids[(ids < 0) | (ids >= n_images)].tolist()
            raise PipelineError(
                f"{where} names unknown image ids {bad} (the packed pixels hold {n_images} "
                "images); are the trials and the pixels from the same index run?"
            )
        if len(ids) - 1 != row.n_way * row.k_shot or not 0 <= row.answer < row.n_way:
            raise PipelineError(
                f"{where} has {len(ids) - 1} candidates and answer {row.answer}; expected "
                f"{row.n_way * row.k_shot} candidates and an answer in 0..{row.n_way - 1}"
            )
        turns = np.asarray(row.turns)
        if len(turns) != row.n_way or not np.isin(turns, np.arange(TURNS)).all():
            raise PipelineError(f"{where} has turns {turns.tolist()}; expected {row.n_way} "
                                f"quarter turns in 0..{TURNS - 1}")


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


def trial_groups(trials: pd.DataFrame):
    """((trial_set, n_way, k_shot), its trials in trial_id order), in GROUP order."""
    for key, group in trials.groupby(GROUP, sort=True):
        yield key, group.sort_values("trial_id")


def needed_keys(trials: pd.DataFrame, pairs: pd.DataFrame) -> np.ndarray:
    """Every (image_id, quarter turns) key (siamese.scoring.keys) that a trial or a pair
    names, once, sorted: the rows of the embedding table."""
    parts = [keys(pairs["left_id"], 0), keys(pairs["right_id"], 0)]
    parts += [trial_set_keys(group) for _, group in trial_groups(trials)]
    return np.unique(np.concatenate(parts))


def embedding_table(model, pixels: np.ndarray, table_keys: np.ndarray,
                    device: torch.device | str, batch_size: int, chunk: int = 4096,
                    tta: int = 0, seed: int = 0) -> torch.Tensor:
    """Embeddings [len(table_keys), D]: row i is the image of key i (preprocessed as in
    training, at the model's image size) turned by its quarter turns. With `tta` > 0 each row
    is the mean of the embeddings of the image and of its `tta` distorted copies."""
    net = getattr(model, "module", model)
    theta = tta_matrices(len(pixels), tta, seed) if tta else None
    step = max(1, chunk // (tta + 1))  # images held at once, copies included: about `chunk`
    rows = [torch.zeros(0, net.dim)]
    for start in range(0, len(table_keys), step):
        part = table_keys[start : start + step]
        ids, turns = part // TURNS, part % TURNS
        images = to_tensor(pixels[ids], net.image_size)
        if theta is not None:
            images, turns = with_copies(images, theta[ids]), np.repeat(turns, tta + 1)
        emb = embed_images(model, images, np.arange(len(images)), device, batch_size, turns)
        rows.append(emb.view(len(part), tta + 1, -1).mean(dim=1))
    return torch.cat(rows)


def tta_matrices(n_images: int, copies: int, seed: int) -> torch.Tensor:
    """[n_images, copies, 2, 3]: Koch's distortions (siamese/augment.py, each component with
    probability TTA_PROBABILITY), drawn for every image in image_id order from one generator
    seeded by `seed`: an image's copies do not depend on which images are evaluated, nor on
    the batches, and candidates and queries are distorted alike."""
    gen = torch.Generator().manual_seed(seed)
    return random_affine(gen, n_images * copies, TTA_PROBABILITY).view(n_images, copies, 2, 3)


def with_copies(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """[B, 1, S, S] -> [B * (1 + C), 1, S, S]: each image, then its C copies warped by its
    matrices theta [B, C, 2, 3]."""
    copies = theta.shape[1]
    warped = warp(images.repeat_interleave(copies, dim=0), theta.flatten(0, 1))
    return torch.cat([images[:, None], warped.view(len(images), copies, *images.shape[1:])],
                     dim=1).flatten(0, 1)


def predict_trials(table: torch.Tensor, table_keys: np.ndarray, model,
                   trials: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: the predicted class (first top score), credit and all scores."""
    frames = []
    for (trial_set, n_way, k_shot), group in trial_groups(trials):
        scores = table_scores(table, table_keys, model, group)
        answers = group["answer"].to_numpy(dtype=np.int64)
        frames.append(pd.DataFrame({
            "trial_set": trial_set,
            "n_way": np.int64(n_way),
            "k_shot": np.int64(k_shot),
            "trial_id": group["trial_id"].to_numpy(dtype=np.int64),
            "alphabet": group["alphabet"].to_numpy(),
            "query_id": group["query_id"].to_numpy(dtype=np.int64),
            "predicted": scores.argmax(axis=1).astype(np.int64),
            "answer": answers,
            "credit": credit(scores, answers),
            "scores": list(scores.astype(np.float32)),
        }))
    return pd.concat(frames, ignore_index=True)


def verify_pairs(table: torch.Tensor, table_keys: np.ndarray, model, pairs: pd.DataFrame
                 ) -> tuple[dict[str, Any], pd.DataFrame]:
    """Same/different accuracy (sigmoid(logit) > 0.5) and ROC AUC on the given pairs, and the
    ROC curve (fpr, tpr, logit threshold; siamese.stats.roc_points)."""
    if len(pairs) == 0:
        return {"pairs": 0}, roc_points(np.zeros(0), np.zeros(0, dtype=bool))
    left = lookup(table, table_keys, keys(pairs["left_id"], 0))
    right = lookup(table, table_keys, keys(pairs["right_id"], 0))
    with torch.no_grad():
        logits = model.score(left, right).numpy()
    same = pairs["same"].to_numpy(dtype=bool)
    entry = accuracy_entry((logits > 0) == same, count_key="pairs")
    auc = roc_auc(logits, same)
    if auc is not None:
        entry["auc"] = round(auc, 4)
    return entry, roc_points(logits, same)


def summarize(predictions: pd.DataFrame, verification: dict[str, Any], seed: int
              ) -> dict[str, Any]:
    """metrics.json: {trial_set: {"<n>-way": accuracy entry, "<n>-way-<k>-shot": ...}, ...,
    "verification": {...}}; each entry has the Wilson interval and the bootstrap over
    alphabets (seeded by `seed`)."""
    metrics: dict[str, Any] = {}
    for (trial_set, n_way, k_shot), group in predictions.groupby(GROUP, sort=True):
        entry = accuracy_entry(group["credit"])
        entry.update(alphabet_interval(group["credit"], group["alphabet"], seed))
        metrics.setdefault(trial_set, {})[way_key(n_way, k_shot)] = entry
    metrics["verification"] = verification
    return metrics


def per_alphabet(predictions: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (trial_set, n_way, k_shot, alphabet), group in predictions.groupby(
            [*GROUP, "alphabet"], sort=True):
        entry = accuracy_entry(group["credit"])
        rows.append({"trial_set": trial_set, "n_way": n_way, "k_shot": k_shot, "alphabet": alphabet,
                     "trials": entry["trials"], "accuracy": entry["accuracy"],
                     "ci95_low": entry["ci95"][0], "ci95_high": entry["ci95"][1]})
    return pd.DataFrame(rows)


def choose_pictures(predictions: pd.DataFrame, count: int, seed: int) -> pd.DataFrame:
    """`count` trials of each trial set at its largest n-way (fewest shots), drawn with `seed`."""
    rng = np.random.default_rng(seed)
    chosen = []
    for _, group in predictions[headline(predictions)].groupby("trial_set", sort=True):
        picks = np.sort(rng.choice(len(group), size=min(count, len(group)), replace=False))
        chosen.append(group.iloc[picks])
    return pd.concat(chosen, ignore_index=True)


def plot_tables(alphabets: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """per_alphabet/<set>-<n>way[-<k>shot].csv: the rows of per_alphabet.csv of one trial set,
    n-way and k-shot, one DVC plot each (a plot shows one file; the sets share alphabet names)."""
    return {f"per_alphabet/{trial_set}-{file_label(n_way, k_shot)}.csv": group.drop(columns=GROUP)
            for (trial_set, n_way, k_shot), group in alphabets.groupby(GROUP, sort=True)}


def write_plots_dir(target: Path, alphabets: pd.DataFrame, roc: pd.DataFrame) -> None:
    """The plots' data, the whole folder swapped in at once."""
    with atomic_path(target, is_dir=True) as tmp:
        write_text(roc.to_csv(index=False), tmp / "roc.csv")
        for name, table in plot_tables(alphabets).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            write_text(table.to_csv(index=False), tmp / name)


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
    """Evaluate models/model.pt on every trial set and the valid pairs; returns the metrics.

    Reads the evaluate section and train.head (to refuse a model.pt of another head)."""
    cfg = read_config(params)
    model, meta = load_model(paths.MODEL, cfg.device)
    check_head(params, model)
    pixels = load_pixels(paths.PIXELS)
    trials = paths.read_manifest(paths.TRIALS, "trials")
    check_trials(trials, len(pixels), paths.TRIALS)
    pairs = paths.read_manifest(paths.PAIRS, "pairs")
    check_pair_ids(pairs, len(pixels), paths.PAIRS)
    dataset = read_dataset(paths.DATASET)
    index = paths.read_manifest(paths.IMAGES, "index")
    character = index["character"].set_axis(index["image_id"])

    valid_pairs = pairs[pairs["role"] == "valid"]
    table_keys = needed_keys(trials, valid_pairs)
    with cpu.kernels(cpu.trained_with(meta)):
        table = embedding_table(model, pixels, table_keys, cfg.device, cfg.batch_size,
                                tta=cfg.tta, seed=cfg.seed)
        model.cpu()  # scoring from the table: only the head runs, on the CPU
        predictions = predict_trials(table, table_keys, model, trials)
        verification, roc = verify_pairs(table, table_keys, model, valid_pairs)
    metrics = summarize(predictions, verification, cfg.seed)

    alphabets = per_alphabet(predictions)
    chosen = choose_pictures(predictions, cfg.pictures, cfg.seed)
    pictures = draw_pictures(chosen, trials, pixels, character)
    report = report_markdown(metrics, meta, dataset, list(pictures))
    figures = {"per_alphabet.png": draw_per_alphabet(alphabets), **pictures}
    write_report_dir(REPORT_DIR, predictions, alphabets, figures, report)
    write_plots_dir(paths.PLOTS, alphabets, roc)
    write_json(metrics, paths.METRICS)
    print(f"evaluate: {summary_line(metrics)}; report {REPORT_DIR / 'report.md'}")
    return metrics
