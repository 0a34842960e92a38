"""detect: referring expressions from each long caption, boxed by a detector.

Extractors (`detect.extractor`, extractors/): `rules`, `spacy`. Detectors
(`detect.backend`, backends/): `demo` (the demo world's detector teacher), `owlv2`,
`grounding_dino` (Hugging Face), `yolo_world` (ultralytics). `selection.py` applies the
paper's box selection to every detector's candidates alike.
"""
