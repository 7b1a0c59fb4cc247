"""Pipeline stages of the siamese one-shot Omniglot project: one module per stage."""
