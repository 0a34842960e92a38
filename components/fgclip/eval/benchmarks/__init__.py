"""The FG-CLIP paper's benchmarks, each read from its own published files.

- config.py: the ``benchmarks`` params section, one pinned settings block per benchmark;
- base.py: the task shapes readers return, counted rejects, image resolution;
- one reader per benchmark: fgovd.py, coco_instances.py (COCO boxes), lvis.py,
  sharegpt4v.py, dci.py, docci.py, urban1k.py, karpathy.py (COCO 5k, Flickr30k 1k),
  imagenet.py; prompts.py (CLIP's class names and templates via LAION's CLIP_benchmark);
- readers.py: benchmark name -> reader.

The data root's layout and what to download: docs/benchmarks.md.
"""
