"""The shared library every component builds on: shards and the data contract (schema),
the resumable shard-stage loop and its command-line wrapper, storage (local and s3://),
MLflow tracking, the backend registry, seeding, boxes, devices, Hugging Face model
sources, versioned prompts and throughput meters.

core imports nothing above it (only `fgclip.errors`); tests/architecture checks it.
"""
