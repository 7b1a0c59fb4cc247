"""Commands run by hand, not by dvc.yaml: the `siamese` CLI, classify, lineage and bench."""
