"""Prefect flows that drive the DVC stages of dvc.yaml.

Their Prefect settings come from prefect.toml in the repository root (Prefect reads it from the
current directory): the home `.prefect/` (database of the temporary server a run without
PREFECT_API_URL starts), no analytics, a start-up timeout that busy machines meet. DVC's
analytics are off in .dvc/config (core.analytics). Importing this package changes nothing.
"""
