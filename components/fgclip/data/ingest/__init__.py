"""ingest: URL lists (parquet, CSV/TSV, JSON lines) -> img2dataset-format image shards with
stable keys, resized at ingest, and a download report by failure kind."""
