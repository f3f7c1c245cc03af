"""The segdec head (transfer.segdec): training and inference images/s on 512x512 DAGM images, and its localisation
against the patch loop on the same images.

Measured, interleaved round by round on the same real DAGM Class1/Test images (``--images``, with their masks):

* ``train``: one optimiser step of a batch (forward, the segdec loss of ``transfer.segdec_task`` from the masks
  and labels, backward, SGD), as ``transfer finetune --head segdec`` takes it (loader and checkpoints aside);
* ``infer``: the image scores and defect maps of the batch, one forward pass (``transfer.heads.segdec.segdec_scores``);
* ``segmap``: localisation as ``transfer localize`` does it for a segdec run: one pass per image, the map
  upsampled to the image;
* ``patch_loop``: the reference patch heatmap (``heatmap_loop``, ``--patch-size``/``--stride``, default 64/32:
  225 patches per image) of an image classifier on the same architecture, as ``transfer localize --mode loop``
  computes it for a classifier run; ``patch_batched``: the same numbers, ``--patch-batch`` patches per pass.

The ratio ``patch_loop / segmap`` (median of per-round ratios) is the localisation speed-up. Models: ``--archs``
with ImageNet weights where available offline (efficientnet_lite0), else from their own initialisation; trunk cut
at ``--output-stride``. ``--quick``: small_cnn, one 128-px crop, one round.

    python benchmarks/bench_segdec.py
    python benchmarks/bench_segdec.py --device cuda --images 32 --batch-size 16
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from _common import DAGM_CLASS1_TEST, finish, interleaved, median_ratio, parser, setup, stats, table

from transfer.data import DefectData, defect_fold
from transfer.heads.segdec import segdec_scores
from transfer.localize import heatmap_batched, heatmap_loop
from transfer.models import build_model, model_spec
from transfer.segdec import build_segdec
from transfer.segdec_task import MaskedImages, segdec_loss


def measure(arch: str, fold, chosen: list[int], args, device: torch.device) -> tuple[dict, dict]:
    """(record, seconds per variant) of one trunk: see the module docstring."""
    spec = model_spec(arch)
    init = "imagenet" if arch == "efficientnet_lite0" else "scratch"
    data = MaskedImages(fold, spec.mean, spec.std, crop_size=args.crop_size, seed=0)
    items = [data[i] for i in chosen]
    images = torch.stack([x for x, _ in items]).to(device)
    targets = {k: torch.stack([t[k] for _, t in items]).to(device) for k in ("label", "mask", "weight")}
    torch.manual_seed(0)
    model = build_segdec(arch, init, args.output_stride).to(device)
    optimizer = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=1e-4, momentum=0.9)
    classifier = build_model(arch, 2, init).to(device).eval()
    weights = torch.tensor([1.0, 1.0], device=device)
    batches = [slice(b, b + args.batch_size) for b in range(0, len(chosen), args.batch_size)]

    def train_step():
        model.train()
        for b in batches:
            loss = segdec_loss(model(images[b]), {k: v[b] for k, v in targets.items()}, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def infer():
        model.eval()
        for b in batches:
            segdec_scores(model, images[b])

    def segmap():
        model.eval()
        for i in range(len(chosen)):
            segdec_scores(model, images[i : i + 1])

    common = {"patch_size": args.patch_size, "stride": args.stride, "device": device}
    variants = {
        "train": train_step,
        "infer": infer,
        "segmap": segmap,
        "patch_loop": lambda: heatmap_loop(classifier, images, **common),
        "patch_batched": lambda: heatmap_batched(classifier, images, batch_size=args.patch_batch, **common),
    }
    times = interleaved(variants, args.repeats, device)
    n = len(chosen)
    record = {
        "images": n,
        "image_size": list(images.shape[-2:]),
        "init": init,
        "output_stride": args.output_stride,
        "batch_size": args.batch_size,
        "patch_size": args.patch_size,
        "patch_stride": args.stride,
    }
    for name in variants:
        record[name] = {**stats(times[name]), "images_per_s": n / float(np.median(times[name]))}
    record["patch_loop_over_segmap"] = median_ratio(times["patch_loop"], times["segmap"])
    record["patch_batched_over_segmap"] = median_ratio(times["patch_batched"], times["segmap"])
    return record, times


def main(argv: list[str] | None = None) -> dict:
    p = parser("segdec", __doc__.split("\n\n")[0], repeats=3)
    p.add_argument("--archs", default="efficientnet_lite0", help="trunks (transfer.models)")
    p.add_argument("--output-stride", type=int, default=16, help="where the trunk is cut")
    p.add_argument("--images", type=int, default=4, help="DAGM images per round (half of them defective)")
    p.add_argument("--batch-size", type=int, default=4, help="images per training step / inference pass")
    p.add_argument(
        "--crop-size", type=int, default=None, help="use crops of this side (default: whole images)"
    )
    p.add_argument("--patch-size", type=int, default=64, help="patch side of the patch-loop comparison")
    p.add_argument("--stride", type=int, default=32, help="patch step of the patch-loop comparison")
    p.add_argument("--patch-batch", type=int, default=32, help="patches per pass of patch_batched")
    p.add_argument("--dagm", type=Path, default=DAGM_CLASS1_TEST, help="DAGM split folder with Label/")
    args = p.parse_args(argv)
    device = setup(args)
    archs = [a for a in args.archs.split(",") if a]
    if args.quick:
        archs, args.images, args.batch_size, args.crop_size, args.output_stride = ["small_cnn"], 1, 1, 128, 8
        args.patch_size, args.stride = 64, 64

    fold = defect_fold(DefectData(str(args.dagm)), "all")
    defective = [i for i, s in enumerate(fold.samples) if s.defect]
    clean = [i for i, s in enumerate(fold.samples) if not s.defect]
    chosen = (defective[: (args.images + 1) // 2] + clean[: args.images // 2])[: args.images]
    results, rows = {}, []
    for arch in archs:
        record, times = measure(arch, fold, chosen, args, device)
        results[arch] = record
        for name in times:
            ratio = median_ratio(times["patch_loop"], times[name]) if name != "train" else None
            rows.append(
                [arch, name, record[name]["images_per_s"], f"{ratio:.3g}x" if ratio is not None else ""]
            )
    text = (
        f"segdec on {device}: {len(chosen)} DAGM images of {results[archs[0]]['image_size']}, output stride "
        f"{args.output_stride}, batch {args.batch_size}; patch comparison {args.patch_size}/{args.stride}; "
        f"median of {args.repeats} interleaved rounds\n"
        + table(["trunk", "what", "images/s", "speed vs patch loop"], rows)
    )
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"}
    config["archs"] = archs
    return finish("segdec", args, device, config, results, text)


if __name__ == "__main__":
    main(sys.argv[1:])
