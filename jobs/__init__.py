"""Driver side of infer-dogs: CLI, listing, Spark session, writing, aggregation, reports."""
