"""Evaluation: the held-out demo tasks, the FG-OVD benchmark, their metrics and reports.

- metrics.py (pure numpy), embedding.py (the `Embedder` interface any model implements),
- heldout.py (the demo world's labelled test split and its questions), tasks.py (running
  the tasks), fgovd.py (the benchmark's files),
- evaluate.py (all tasks for one model), report.py (metrics.json, counts.json, plot),
  cli.py (`fgclip eval`), table.py (`fgclip eval-table`);
- benchmarks/ (the paper's benchmarks, each read from its own published files, and their
  pinned protocols) and suite/ (`fgclip eval --suite paper`: batched shared embeddings,
  scoring, results and the paper-style table).
"""
