"""The paper's benchmark suite (`fgclip eval --suite paper`) over any model adapter.

- features.py: the adapter interface the suite needs and the batched encoder: every image
  decoded once and embedded once per view, every box and every text once, shared by all
  benchmarks that need them;
- scoring.py: the metrics of each task from those embeddings (pure numpy);
- run.py: read the benchmarks, check each one's pinned protocol against the model, encode,
  score; results.py: the JSON per benchmark, metrics.json (for the registry's gate), the
  paper-style table and plot; published.py: the published reference numbers.
"""
