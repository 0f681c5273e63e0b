"""Executor side of infer-dogs: reading, decoding, the model and prediction (shipped to Spark workers)."""
