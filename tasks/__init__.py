"""The pipeline stages, one module per stage of dvc.yaml, each plain functions + `run(params)`."""
