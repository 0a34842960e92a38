"""The demo world: one data source among others, with ground truth.

- world.py, draw.py: drawn scenes written as img2dataset shards plus a truth sidecar;
  cli.py: `fgclip demo-world`.
- truth.py: the one reader of the truth sidecar.
- captions.py, detector.py: the teachers the demo backends of recaption and detect serve;
  judge.py: the oracle the QC truth reviewer asks.

Nothing outside the demo backends, the QC truth reviewer and the held-out evaluation reads
the truth.
"""
