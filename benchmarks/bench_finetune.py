"""Fine-tuning throughput (images/s) of transfer.training.train for the default model and the CPU demo's model.

What runs is the product's training loop itself, ``train(FinetuneConfig(...), run_dir, runtime=Runtime(...,
stop_after_steps=n))``, as ``transfer finetune --stop-after-steps n`` runs it: DAGM images read and augmented by
the loader, forward and backward pass (Inception V3 with its auxiliary head at 299x299), SGD step, schedule,
then a checkpoint when it stops. Every run also builds the task and the model and writes that checkpoint; to
time the steps alone, each round runs it twice in fresh folders, with ``--warmup-steps`` and with
``--warmup-steps + --steps`` steps, and the throughput is ``--steps * batch / (difference of the two times)``
(median over rounds). Both runs stay inside the first epoch, so no validation pass is timed.

Models: ``inception_v3`` (the default architecture, on whole images at 299x299; ``--base scratch``, since its
ImageNet weights are not available offline: the speed does not depend on them) and ``small_cnn`` (the CPU demo's
model, trained as ``dataonomy demo`` trains it: on full-resolution 64x64 patches of a 64-pixel grid, batch 64;
throughput is then patches/s). ``--patch-archs`` lists the architectures trained on patches. Data: DAGM Class1/Test with a 20 % test fold carved out (``--test-fraction 0.2``), the rest split
80/20 train/validation as fine-tuning does. Mixed precision and channels-last follow the config's defaults (on,
which means: used on CUDA, not on a CPU); loader workers follow ``transfer finetune`` (4 with CUDA, else 0).

    python benchmarks/bench_finetune.py                                   # batch 32 (FinetuneConfig default)
    python benchmarks/bench_finetune.py --archs inception_v3 --batch-size 8 --steps 3    # a CPU-sized run
"""

from __future__ import annotations

import contextlib
import io
import itertools
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import DAGM_CLASS1_TEST, finish, interleaved, parser, setup, stats, table

from transfer.config import FinetuneConfig
from transfer.training import Runtime, make_task, train


def main(argv: list[str] | None = None) -> dict:
    p = parser("finetune", __doc__.split("\n\n")[0], repeats=3)
    p.add_argument("--archs", default="inception_v3,small_cnn", help="architectures (transfer.models)")
    p.add_argument(
        "--batch-size",
        default="32,64",
        help="batch size, one for all archs or one per arch (comma-separated): 32 is FinetuneConfig's default,"
        " 64 the demo's",
    )
    p.add_argument("--image-size", type=int, default=None, help="input side (default: the architecture's)")
    p.add_argument(
        "--steps", type=int, default=5, help="timed optimiser steps (the difference of the two runs)"
    )
    p.add_argument("--warmup-steps", type=int, default=1, help="steps of the shorter run (first-step costs)")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: 4 with CUDA, else 0)")
    p.add_argument(
        "--patch-archs", default="small_cnn", help="architectures fine-tuned on patches (as the demo does)"
    )
    p.add_argument("--patch-size", type=int, default=64, help="patch side for --patch-archs (the demo's)")
    p.add_argument(
        "--patch-stride", type=int, default=64, help="patch grid step for --patch-archs (the demo's)"
    )
    p.add_argument("--dagm", type=Path, default=DAGM_CLASS1_TEST, help="DAGM images (one split folder)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="test fold carved out of --dagm")
    args = p.parse_args(argv)
    device = setup(args)
    archs = [a for a in args.archs.split(",") if a]
    patch_archs = {a for a in args.patch_archs.split(",") if a}
    batches = [int(b) for b in args.batch_size.split(",") if b]
    if args.quick:
        # Whole images at 32x32: building the patch set would decode every training image.
        archs, batches, args.steps, args.image_size, patch_archs = ["small_cnn"], [4], 1, 32, set()
    if len(batches) == 1:
        batches = batches * len(archs)
    if len(batches) != len(archs):
        raise SystemExit(f"--batch-size {args.batch_size}: give one value or one per arch ({len(archs)})")
    if args.steps < 1 or args.warmup_steps < 1:
        raise SystemExit("--steps and --warmup-steps must be at least 1")
    workers = (4 if device.type == "cuda" else 0) if args.workers is None else args.workers

    results, rows = {}, []
    counter = itertools.count()  # a fresh run folder for every call
    with tempfile.TemporaryDirectory(prefix="bench_finetune_") as scratch:
        for arch, batch in zip(archs, batches, strict=True):
            config = FinetuneConfig(
                base="scratch",
                arch=arch,
                data=str(args.dagm.resolve()),
                batch_size=batch,
                image_size=args.image_size,
                test_fraction=args.test_fraction,
                head="classify",  # the segdec head has its own benchmark (bench_segdec.py)
                patches=arch in patch_archs,
                patch_size=args.patch_size,
                patch_stride=args.patch_stride,
            )
            train_examples = len(make_task(config).train_set)
            if args.warmup_steps + args.steps > train_examples // batch:
                raise SystemExit(
                    f"{arch}: {args.warmup_steps + args.steps} steps of {batch} do not fit in one epoch of"
                    f" {train_examples} training examples (lower --steps or --batch-size)"
                )

            def run(steps: int, config=config):
                def call():
                    folder = Path(scratch) / f"run{next(counter)}"
                    runtime = Runtime(
                        device=str(device), num_workers=workers, progress=False, stop_after_steps=steps
                    )
                    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                        summary = train(config, folder, runtime=runtime)
                    if summary.get("step") != steps:
                        raise RuntimeError(f"expected to stop after {steps} steps, got {summary}")

                return call

            times = interleaved(
                {
                    "short": run(args.warmup_steps),
                    "long": run(args.warmup_steps + args.steps),
                },
                args.repeats,
                device,
                warmup=False,
            )
            differences = [b - a for a, b in zip(times["short"], times["long"], strict=True)]
            step_s = float(np.median(differences)) / args.steps
            record = {
                "batch_size": batch,
                "input_size": config.input_size,
                "examples": "patches" if config.patch.patches else "images",
                "patch_size": config.patch.patch_size if config.patch.patches else None,
                "patch_stride": config.patch.patch_stride if config.patch.patches else None,
                "aux_logits": config.aux_logits,
                "amp_used": device.type == "cuda" and config.amp,
                "channels_last_used": device.type == "cuda" and config.channels_last,
                "workers": workers,
                "train_examples": train_examples,
                "steps_timed": args.steps,
                "warmup_steps": args.warmup_steps,
                "short_run": stats(times["short"]),
                "long_run": stats(times["long"]),
                "step_time_s": step_s,
                "step_time_runs_s": [d / args.steps for d in differences],
                "examples_per_s": batch / step_s,
            }
            results[arch] = record
            rows.append(
                [
                    arch,
                    f"{config.input_size}x{config.input_size} {'patches' if config.patch.patches else 'images'}",
                    batch,
                    step_s,
                    record["examples_per_s"],
                    float(np.median(times["short"])),
                    float(np.median(times["long"])),
                ]
            )
    text = (
        f"Fine-tuning on {device} (train(), {workers} loader workers); step time = difference of a"
        f" {args.warmup_steps}-step and a {args.warmup_steps + args.steps}-step run, median of {args.repeats}\n"
        + table(
            [
                "arch",
                "input",
                "batch",
                "s / step",
                "examples/s",
                f"{args.warmup_steps}-step run s",
                f"{args.warmup_steps + args.steps}-step run s",
            ],
            rows,
        )
    )
    config_out = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"}
    config_out.update(archs=archs, batch_size=batches, workers=workers)
    return finish("finetune", args, device, config_out, results, text)


if __name__ == "__main__":
    main(sys.argv[1:])
