"""What a training run reports: step-indexed metrics (reports/train), its curves, messages.

tqdm, matplotlib and dvclive are imported where they are used, so importing training imports
none of them, and training runs without them (the lent GPU machine has none): no bar, no
picture, JSON lines.
"""

import json
import os
import sys
from pathlib import Path
from typing import Any

from siamese import paths
from siamese.atomic import atomic_path, write_json

CURVES = paths.TRAIN_LIVE / "curves.png"
JSON_LOG = paths.TRAIN_LIVE / "log.jsonl"


class TrainLog:
    """Step-indexed metrics via dvclive (reports/train), or JSON lines where it is missing.

    The history lives in the training state, so a resumed run replays it and the logs hold
    exactly the steps of the computation that produced the weights.
    """

    def __init__(self, history: list[dict[str, float]]):
        try:
            from dvclive import Live
        except ImportError:
            self.live = None
            JSON_LOG.parent.mkdir(parents=True, exist_ok=True)
            JSON_LOG.write_text("")
        else:
            self.live = Live(dir=str(paths.TRAIN_LIVE), dvcyaml=False, save_dvc_exp=False)
        self.summary: dict[str, float] = {}
        for entry in history:
            self.log(entry)

    def log(self, entry: dict[str, float]) -> None:
        metrics = {k: v for k, v in entry.items() if k != "step" and not k.startswith("best")}
        self.summary.update(entry)
        if self.live is None:
            with open(JSON_LOG, "a") as f:
                f.write(json.dumps(entry, sort_keys=True) + "\n")
            write_json(self.summary, paths.TRAIN_LIVE / "metrics.json")
            return
        self.live.step = int(entry["step"])
        for name, value in metrics.items():
            self.live.log_metric(name, value)
        for name in ("best_valid_accuracy", "best_step"):
            if name in entry:
                self.live.log_metric(name, entry[name], plot=False)
        self.live.make_summary()

    def close(self) -> None:
        if self.live is not None:
            self.live.end()


class NoBar:
    """tqdm's bar as training drives it, showing nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(**options: Any) -> Any:
    """tqdm(**options), or a bar showing nothing where tqdm is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return NoBar()
    return tqdm(**options)


def draw_curves(history: list[dict[str, float]], target: Path = CURVES) -> None:
    try:
        import matplotlib
    except ImportError:
        say(f"matplotlib is not installed: {target.name} not drawn")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in ((ax_loss, "loss", "training loss"),
                           (ax_acc, "valid_accuracy", "valid n-way accuracy (largest n)")):
        points = [(h["step"], h[key]) for h in history if key in h]
        if points:
            ax.plot(*zip(*points, strict=True), marker="." if key != "loss" else None)
        ax.set_xlabel("step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def say(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"train: {message}", file=sys.stderr, flush=True)
