"""The project's tests: fixtures in conftest.py, helpers in synthetic.py (made-up data),
flowkit.py (Prefect and DVC projects) and training.py (small real trainings)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the repository root
