"""The project's tests: fixtures and hooks in conftest.py; plain helpers, which test modules
import (never from each other or from conftest.py), in synthetic.py (made-up Omniglot zips),
stagekit.py (the data stages run in a folder, their inputs broken), flowkit.py (Prefect and
DVC projects), verifykit.py (small DVC projects for `siamese verify`: a stage caught while it
runs, a persist output, a remote), training.py (small real trainings), evalkit.py (a made-up
data folder for evaluate) and classifykit.py (a small model and pictures for classify)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the repository root
