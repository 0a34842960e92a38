"""`fgclip train`: one FG-CLIP training stage (1: global; 2: + regional + hard negatives).

Single process: `fgclip train --stage 1 ...`. Several processes or nodes: launch the same
command with torchrun (or a Kubernetes training operator), e.g.
`torchrun --nproc_per_node=8 -m fgclip.cli train --stage 1 ...`; RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR / MASTER_PORT come from the launcher.
"""

from __future__ import annotations

import argparse
import tempfile
from typing import TYPE_CHECKING

from transformers.utils import logging as hf_logging

from fgclip.core.dataset import add_dataset_arguments, dataset_input
from fgclip.core.storage import is_s3
from fgclip.errors import ComponentError
from fgclip.model.location import local_model_dir, publish_model_dir
from fgclip.train.examples import AnnotationDirs
from fgclip.train.job import TrainingError, TrainJob
from fgclip.train.loop import run_training

if TYPE_CHECKING:
    from fgclip.config import Params

HELP = "train FG-CLIP, stage 1 (global) or stage 2 (+ regional + hard negatives), with DeepSpeed ZeRO-2"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", type=int, choices=(1, 2), required=True)
    parser.add_argument("--init", required=True, help="FG-CLIP checkpoint to start from (models/base, models/stage1)")
    add_dataset_arguments(parser, images_help="image shard folder (NNNNN.tar), local or s3://")
    parser.add_argument("--captions", required=True, help="captions stage folder (long captions)")
    parser.add_argument("--regions", default=None, help="regions stage folder (stage 2)")
    parser.add_argument("--negatives", default=None, help="negatives stage folder (stage 2)")
    parser.add_argument(
        "--out", required=True, help="output folder or s3:// prefix: the final model (HF format) and checkpoints/"
    )
    parser.add_argument("--checkpoint-dir", default=None, help="checkpoint folder (default: OUT/checkpoints)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument(
        "--stop-after-steps",
        type=int,
        default=None,
        metavar="N",
        help="checkpoint and stop after step N without changing the schedule (resume later)",
    )


def command(args: argparse.Namespace, params: Params) -> int:
    if args.stage == 2 and not args.regions:
        raise ComponentError("--stage 2 needs --regions (and --negatives for the hard-negative loss)")
    if args.stop_after_steps is not None and args.stop_after_steps < 1:
        raise ComponentError("--stop-after-steps must be >= 1")
    data = dataset_input(args, split="train")  # held-out shards never reach training
    # s3:// models: the start checkpoint is fetched once; the run writes locally and the final
    # model is published to the prefix (DeepSpeed and Hugging Face save to local files)
    remote_out = args.out if is_s3(args.out) else None
    out = tempfile.mkdtemp(prefix="fgclip-train-") if remote_out else args.out
    job = TrainJob(
        stage=args.stage,
        init=str(local_model_dir(args.init)),
        images=data.images,
        shards=tuple(data.shards) if data.shards is not None else None,
        annotations=AnnotationDirs(
            args.captions, args.regions if args.stage == 2 else None, args.negatives if args.stage == 2 else None
        ),
        out=out,
        checkpoint_dir=args.checkpoint_dir,
        resume=args.resume,
        stop_after_steps=args.stop_after_steps,
    )
    if args.no_progress:
        hf_logging.disable_progress_bar()  # weight loading / saving bars
    try:
        result = run_training(job, params, progress=not args.no_progress)
    except TrainingError as error:
        raise ComponentError(str(error)) from error
    if not result.is_main:
        return 0
    if remote_out and result.final_dir is not None:
        publish_model_dir(result.final_dir, remote_out, skip=("checkpoints",))
    state = "finished" if result.finished else "stopped"
    print(
        f"stage {args.stage} {state} at step {result.step}/{result.total_steps} "
        f"in {result.seconds:.1f} s ({result.images_per_s:.1f} images/s)"
        + (f"; model in {result.final_dir}" if result.final_dir else "")
    )
    return 0
