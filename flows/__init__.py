"""Prefect flows that drive the DVC stages of dvc.yaml."""
