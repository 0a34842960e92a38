"""FG-CLIP stage-2 training step: the project's step against the released trainer's shape.

Both variants run in one process, on the same device, on the same random batch, so the
ratio (ours / reference) is what to read; absolute numbers depend on the machine.

reference  the shape of the released FG-CLIP v1 trainer: eager attention, the whole
           model cast to bf16, gradient checkpointing, every text padded to its fixed
           length (77 short / 248 long), no attention masks, and the hard-negative
           texts reshaped to a fixed (1 + negatives)-way group (11 by default) that
           assumes every box has exactly that many; losses computed in bf16.
ours       the project's step: SDPA attention, bf16 autocast over fp32 weights, texts
           trimmed to the batch's longest real sequence with attention masks (exact
           under CLIP's causal mask + first-EOS pooling), losses from fgclip.model.losses
           in fp32 outside autocast, masked hard negatives, AdamW without weight decay on
           temperatures; gradient checkpointing optional (on by default, as the paper's
           batch of 512 per GPU needs it).

Both use the same FGCLIPModel (value-path dense features, RoIAlign 1x1 region features)
and encode the same number of texts, so the ratio measures the implementation, not a
different amount of work. Realistic text lengths by default: short 15-35 tokens, long
120-248, region phrases and negatives 5-20.

Output: one JSON line per variant, then one ratio line. Memory is
torch.cuda / torch.npu max_memory_allocated on accelerators; on CPU it is the peak
resident-set growth of the process while the variant runs (approximate: it includes
allocator caching and anything else the process touches).

    python benchmarks/train_step.py --size tiny --device cpu --batch 4 --steps 2
    python benchmarks/train_step.py --size b16 --device cuda --batch 256 --steps 5 \\
        --anchor /path/to/gpu_stage2_step.py
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

try:
    import fgclip  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "components"))

from fgclip.model.dense import region_features
from fgclip.model.losses import PAPER_HARD_NEGATIVE_WEIGHT, PAPER_REGIONAL_WEIGHT, stage2_loss
from fgclip.model.modeling import FGCLIPConfig, FGCLIPModel, adamw_param_groups, trim_to_longest

#: Model sizes. b16 is the anchor's: ViT-B/16 at 224 px, a 12-layer 512-wide text tower
#: (CLIP's 49408-token vocabulary), 248 long-caption positions, projection 512.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        text_config=dict(
            hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2, vocab_size=1000
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=2,
            num_hidden_layers=2,
            patch_size=8,
            image_size=32,
        ),
        projection_dim=16,
    ),
    "b16": dict(
        text_config=dict(
            hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12, vocab_size=49408
        ),
        vision_config=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            patch_size=16,
            image_size=224,
        ),
        projection_dim=512,
    ),
}
GIB = 2**30


def build_config(size: str, short_positions: int, long_positions: int) -> FGCLIPConfig:
    spec = SIZES[size]
    vocab = spec["text_config"]["vocab_size"]
    # CLIP's convention: the last two ids are BOS and EOS, and padding repeats EOS.
    text = dict(
        spec["text_config"],
        max_position_embeddings=short_positions,
        bos_token_id=vocab - 2,
        eos_token_id=vocab - 1,
        pad_token_id=vocab - 1,
    )
    return FGCLIPConfig(
        text_config=text,
        vision_config=dict(spec["vision_config"]),
        projection_dim=spec["projection_dim"],
        long_text_max_position_embeddings=long_positions,
        long_text_positions_stretched=True,
    )


# ------------------------------------------------------------------------- the batch


@dataclass
class Texts:
    ids: torch.Tensor  # (N, fixed length), right-padded with EOS
    mask: torch.Tensor  # (N, fixed length)


@dataclass
class Batch:
    pixels: torch.Tensor  # (B, 3, S, S) float32
    short: Texts
    long: Texts
    phrases: Texts  # one region expression per box (B * boxes)
    hard: Texts  # per box: the positive, then its negatives (B * boxes * (1 + negatives))
    boxes: torch.Tensor  # (B * boxes, 4) normalised x1, y1, x2, y2
    box_image: torch.Tensor  # (B * boxes,) image index of each box
    boxes_per_image: int
    negatives: int


def random_texts(
    count: int, lengths: tuple[int, int], pad_to: int, config: FGCLIPConfig, generator: torch.Generator
) -> Texts:
    """BOS, random words, EOS, then EOS padding; lengths (with BOS/EOS) drawn in [lo, hi]."""
    text = config.text_config
    low, high = max(2, lengths[0]), min(lengths[1], pad_to)
    length = torch.randint(low, high + 1, (count,), generator=generator)
    ids = torch.randint(0, text.bos_token_id, (count, pad_to), generator=generator)
    column = torch.arange(pad_to)
    ids = torch.where(column[None] >= (length[:, None] - 1), text.eos_token_id, ids)
    ids[:, 0] = text.bos_token_id
    return Texts(ids=ids, mask=(column[None] < length[:, None]).long())


def make_batch(config: FGCLIPConfig, args: argparse.Namespace) -> Batch:
    generator = torch.Generator().manual_seed(args.seed)
    size, short_len, long_len = (
        config.vision_config.image_size,
        config.text_config.max_position_embeddings,
        config.long_text_max_position_embeddings,
    )
    boxes_total = args.batch * args.boxes
    corner = torch.rand(boxes_total, 2, generator=generator) * args.box_max_corner
    side = args.box_min_side + torch.rand(boxes_total, 2, generator=generator) * (args.box_max_side - args.box_min_side)
    return Batch(
        pixels=torch.randn(args.batch, 3, size, size, generator=generator),
        short=random_texts(args.batch, args.short_len, short_len, config, generator),
        long=random_texts(args.batch, args.long_len, long_len, config, generator),
        phrases=random_texts(boxes_total, args.phrase_len, short_len, config, generator),
        hard=random_texts(boxes_total * (1 + args.negatives), args.phrase_len, short_len, config, generator),
        boxes=torch.cat([corner, (corner + side).clamp(max=1.0)], dim=1),
        box_image=torch.arange(args.batch).repeat_interleave(args.boxes),
        boxes_per_image=args.boxes,
        negatives=args.negatives,
    )


def batch_to(batch: Batch, device: torch.device) -> Batch:
    def move(texts: Texts) -> Texts:
        return Texts(texts.ids.to(device), texts.mask.to(device))

    return Batch(
        batch.pixels.to(device),
        move(batch.short),
        move(batch.long),
        move(batch.phrases),
        move(batch.hard),
        batch.boxes.to(device),
        batch.box_image.to(device),
        batch.boxes_per_image,
        batch.negatives,
    )


# --------------------------------------------------------------------- the two steps


def _enable_checkpointing(model: FGCLIPModel) -> None:
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _contrastive(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    logits = scale * a @ b.T
    labels = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def reference_step(
    config: FGCLIPConfig, batch: Batch, device: torch.device, args: argparse.Namespace
) -> tuple[torch.nn.Module, Callable[[], torch.Tensor], int]:
    """The released trainer's shape (written from its description, not its code)."""
    model = FGCLIPModel._from_config(config, attn_implementation="eager").to(device).to(torch.bfloat16)
    _enable_checkpointing(model)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    pixels = batch.pixels.to(torch.bfloat16)
    group = 1 + batch.negatives  # fixed: every box must come with exactly this many texts

    def encode(ids: torch.Tensor, long: bool = False) -> torch.Tensor:
        return F.normalize(model.get_text_features(ids, long=long), dim=-1)  # full padded length, no mask

    def step() -> torch.Tensor:
        image, dense = model.get_image_and_dense_features(pixels)
        image = F.normalize(image, dim=-1)
        regions = F.normalize(region_features(dense, batch.boxes, batch.box_image).to(torch.bfloat16), dim=-1)
        global_loss = _contrastive(image, encode(batch.long.ids, long=True), model.logit_scale.exp()) + _contrastive(
            image, encode(batch.short.ids), model.logit_scale.exp()
        )
        regional = _contrastive(regions, encode(batch.phrases.ids), model.logit_scale_finegraind.exp())
        hard_texts = encode(batch.hard.ids).view(-1, group, regions.shape[-1])
        hard_logits = model.logit_scale_hardneg.exp() * torch.einsum("kd,kgd->kg", regions, hard_texts)
        hard = F.cross_entropy(hard_logits, torch.zeros(hard_logits.shape[0], dtype=torch.long, device=device))
        loss = global_loss + args.regional_weight * regional + args.hard_weight * hard
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    tokens = sum(t.ids.numel() for t in (batch.short, batch.long, batch.phrases, batch.hard))
    return model, step, tokens


def ours_step(
    config: FGCLIPConfig, batch: Batch, device: torch.device, args: argparse.Namespace
) -> tuple[torch.nn.Module, Callable[[], torch.Tensor], int]:
    """The project's step: FGCLIPModel + fgclip.model.losses."""
    model = FGCLIPModel._from_config(config, attn_implementation="sdpa").to(device)
    if args.ours_checkpointing:
        _enable_checkpointing(model)
    model.train()
    optimizer = torch.optim.AdamW(adamw_param_groups(model, args.weight_decay), lr=args.lr, fused=device.type == "cuda")
    boxes = batch.boxes.shape[0]
    region_valid = torch.ones(boxes, dtype=torch.bool, device=device)
    negative_valid = torch.ones(boxes, batch.negatives, dtype=torch.bool, device=device)

    def encode(texts: Texts, long: bool = False) -> torch.Tensor:
        ids, mask = trim_to_longest(texts.ids, texts.mask)
        return model.get_text_features(ids, mask, long=long)

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            image, dense = model.get_image_and_dense_features(batch.pixels)
            regions = region_features(dense, batch.boxes, batch.box_image)
            long, short, phrases = encode(batch.long, long=True), encode(batch.short), encode(batch.phrases)
            hard = encode(batch.hard).view(boxes, 1 + batch.negatives, -1)
        # The losses normalise in fp32; outside autocast their matmuls stay fp32 too.
        losses = stage2_loss(
            image_feats=image,
            long_text_feats=long,
            short_text_feats=short,
            region_feats=regions,
            region_text_feats=phrases,
            region_valid_mask=region_valid,
            hard_region_feats=regions,
            hard_pos_text_feats=hard[:, 0],
            hard_neg_text_feats=hard[:, 1:],
            hard_neg_mask=negative_valid,
            logit_scale=model.logit_scale,
            regional_logit_scale=model.logit_scale_finegraind,
            hard_logit_scale=model.logit_scale_hardneg,
            regional_weight=args.regional_weight,
            hard_weight=args.hard_weight,
        )
        losses.total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return losses.total.detach()

    tokens = sum(
        trim_to_longest(t.ids, t.mask)[0].numel() for t in (batch.short, batch.long, batch.phrases, batch.hard)
    )
    return model, step, tokens


VARIANTS = {"reference": reference_step, "ours": ours_step}


# ---------------------------------------------------------------- device and memory


class Device:
    """Synchronisation and peak memory for cuda, npu and cpu."""

    def __init__(self, name: str) -> None:
        if name == "npu":
            import torch_npu  # noqa: F401 - registers torch.npu
        self.device = torch.device(name)
        self.module = getattr(torch, name, None) if name != "cpu" else None
        self._rss_base = 0
        self._rss_method = "cpu_peak_rss_growth_approx"

    def synchronize(self) -> None:
        if self.module is not None:
            self.module.synchronize()

    def reset_peak(self) -> None:
        if self.module is not None:
            self.module.reset_peak_memory_stats()
            return
        gc.collect()
        self._rss_base = _rss_bytes("VmRSS")
        try:  # Linux: "5" resets the process's peak RSS (VmHWM) to its current RSS
            Path("/proc/self/clear_refs").write_text("5")
            self._rss_method = "cpu_peak_rss_growth_approx"
        except OSError:
            self._rss_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self._rss_method = "cpu_ru_maxrss_growth_approx (only growth above earlier peaks)"

    def peak(self) -> tuple[float, str]:
        """(peak GiB, how it was measured)."""
        if self.module is not None:
            return self.module.max_memory_allocated() / GIB, f"{self.device.type}_max_memory_allocated"
        if self._rss_method.startswith("cpu_peak_rss"):
            peak = _rss_bytes("VmHWM")
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(0, peak - self._rss_base) / GIB, self._rss_method

    def release(self) -> None:
        gc.collect()
        if self.module is not None:
            self.module.empty_cache()


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_variant(name: str, config: FGCLIPConfig, batch: Batch, device: Device, args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    # CPU: memory counts from before the model exists; accelerators: peak during timed steps.
    if device.module is None:
        device.reset_peak()
    model, step, tokens = VARIANTS[name](config, batch, device.device, args)
    try:
        for _ in range(args.warmup):
            step()
        device.synchronize()
        if device.module is not None:
            device.reset_peak()
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        device.synchronize()
        seconds = (time.perf_counter() - start) / args.steps
        peak, method = device.peak()
    finally:
        del model, step
        device.release()
    return {
        "variant": name,
        "size": args.size,
        "device": device.device.type,
        "batch": args.batch,
        "boxes": args.boxes,
        "negatives": args.negatives,
        "steps": args.steps,
        "step_ms": round(seconds * 1e3, 2),
        "images_per_s": round(args.batch / seconds, 2),
        "peak_mem_gib": round(peak, 3),
        "memory": method,
        "text_tokens_per_step": tokens,
        "loss": round(float(loss), 4),
    }


def run_anchor(path: str, args: argparse.Namespace) -> dict:
    """The shared anchor script's `ref` variant, imported and run in this process."""
    spec = importlib.util.spec_from_file_location("fgclip_anchor_stage2", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the anchor script {path}")
    anchor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(anchor)
    result = anchor.run("ref", args.batch, args.steps)
    return {
        "variant": "anchor-ref",
        "size": "b16",
        "device": "cuda",
        "batch": args.batch,
        "steps": args.steps,
        "step_ms": result["step_ms"],
        "images_per_s": result["img_per_s"],
        "peak_mem_gib": result["peak_mem_gib"],
        "memory": "cuda_max_memory_allocated",
        "source": path,
    }


# ---------------------------------------------------------------------------- CLI


def _length_range(text: str) -> tuple[int, int]:
    low, high = (int(part) for part in text.split(","))
    if not 2 <= low <= high:
        raise argparse.ArgumentTypeError(f"{text!r}: need LO,HI with 2 <= LO <= HI")
    return low, high


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--device", choices=["cpu", "cuda", "npu"], default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--boxes", type=int, default=4, help="boxes per image")
    parser.add_argument("--negatives", type=int, default=10, help="hard negatives per box")
    parser.add_argument("--variants", default="reference,ours", help="comma list of " + ",".join(VARIANTS))
    parser.add_argument(
        "--ours-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="gradient checkpointing in our step (the reference always has it)",
    )
    parser.add_argument("--short-positions", type=int, default=77)
    parser.add_argument("--long-positions", type=int, default=248)
    parser.add_argument("--short-len", type=_length_range, default=(15, 35), help="short caption tokens LO,HI")
    parser.add_argument("--long-len", type=_length_range, default=(120, 248), help="long caption tokens LO,HI")
    parser.add_argument("--phrase-len", type=_length_range, default=(5, 20), help="region phrase / negative tokens")
    parser.add_argument("--box-min-side", type=float, default=0.05)
    parser.add_argument("--box-max-side", type=float, default=0.4)
    parser.add_argument("--box-max-corner", type=float, default=0.6)
    parser.add_argument("--lr", type=float, default=1e-6, help="paper stage 2")
    parser.add_argument("--weight-decay", type=float, default=1e-3, help="paper stage 2")
    parser.add_argument("--regional-weight", type=float, default=PAPER_REGIONAL_WEIGHT)
    parser.add_argument("--hard-weight", type=float, default=PAPER_HARD_NEGATIVE_WEIGHT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice; 1 is steadier on a shared machine)",
    )
    parser.add_argument(
        "--anchor",
        default=None,
        help="cuda only: path to the shared anchor gpu_stage2_step.py; runs its `ref` variant too",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    if args.anchor and args.device != "cuda":
        raise SystemExit("--anchor runs the anchor's CUDA step: use it with --device cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = Device(args.device)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the paper trains with TF32, as does the anchor
        torch.backends.cudnn.allow_tf32 = True
    config = build_config(args.size, args.short_positions, args.long_positions)
    batch = batch_to(make_batch(config, args), device.device)

    results: dict[str, dict] = {}
    for name in variants:
        try:
            results[name] = run_variant(name, config, batch, device, args)
        except torch.OutOfMemoryError as error:  # a result of the benchmark, not a crash
            results[name] = {"variant": name, "batch": args.batch, "error": f"out of memory: {str(error)[:300]}"}
        # Outside the except block: the traceback, and the tensors its frames hold, are gone.
        device.release()
        print(json.dumps(results[name]), flush=True)
    if args.anchor:
        try:
            results["anchor-ref"] = run_anchor(args.anchor, args)
        except Exception as error:  # the anchor is outside code: report its failure, keep our numbers
            results["anchor-ref"] = {"variant": "anchor-ref", "error": repr(error)[:400]}
        device.release()
        print(json.dumps(results["anchor-ref"]), flush=True)
    print(json.dumps(ratio_line(results)), flush=True)
    return 0


def ratio_line(results: dict[str, dict]) -> dict:
    """ours / reference for throughput and peak memory (None where a side failed)."""

    def ratio(key: str, top: str, bottom: str) -> float | None:
        a, b = results.get(top, {}).get(key), results.get(bottom, {}).get(key)
        return round(a / b, 3) if a is not None and b else None

    line = {
        "variant": "ratio",
        "of": "ours/reference",
        "images_per_s": ratio("images_per_s", "ours", "reference"),
        "peak_mem": ratio("peak_mem_gib", "ours", "reference"),
    }
    if "anchor-ref" in results:  # cross-check: our reference shape vs the anchor's
        line["reference_vs_anchor_images_per_s"] = ratio("images_per_s", "reference", "anchor-ref")
    return line


if __name__ == "__main__":
    sys.exit(main())
