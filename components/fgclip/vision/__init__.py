"""Model backends of the data components (Hugging Face captioner and zero-shot detectors,
ultralytics YOLO-World, the spaCy expression extractor).

The core modules register each backend by name with a factory that imports its module
only when the backend is chosen, so `fgclip --help` and the demo pipeline never pay for
torch, transformers or spaCy."""
