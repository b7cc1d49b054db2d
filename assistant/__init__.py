import retrieval  # noqa: F401  (its process defaults must be set before torch loads)
