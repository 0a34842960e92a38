"""FG-CLIP training: the starting checkpoint, the streaming loader and the two-stage trainer.

- ``tokenizer``: a CLIP-compatible BPE tokenizer trained on the demo corpus; ``load_tokenizer``.
- ``init_model``: ``fgclip init-model`` (tiny demo model from config, or a converted CLIP).
- ``images``: CLIP preprocessing (resize, centre crop, normalise) and the boxes that follow it.
- ``examples``: one sample's annotations joined, decoded, tokenised; ``collate`` pads and masks.
- ``data``: the webdataset stream per rank and worker: shard splitting, shuffling, fixed
  epochs, exact resume positions, the DataLoader.
- ``step``: one batch -> the stage-1 or stage-2 loss and its parts.
- ``distributed``: process group and device (nccl / hccl / gloo), single-process defaults.
- ``job``: what a training run is asked to do and what it returns.
- ``engine``: AdamW, the warmup-cosine schedule and the DeepSpeed ZeRO-2 engine; one step.
- ``checkpoints``: checkpoints with exact resume, and the final Hugging Face export.
- ``loop``: the training loop and MLflow.
- ``command``: ``fgclip train``.
"""
