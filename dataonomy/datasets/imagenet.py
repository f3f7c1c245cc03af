"""ImageNet-style source pools: the ILSVRC2012 train layout and the Tiny ImageNet layout.

* ILSVRC2012: ``<root>/<wnid>/*.JPEG`` (``root`` may also be the folder holding ``train/``);
  names and ImageNet-1k indices from ``LOC_synset_mapping.txt`` found in ``root`` or one of its
  parents, else the packaged copy.
* Tiny ImageNet: ``wnids.txt``, ``words.txt``, ``train/<wnid>/images/*.JPEG`` and
  ``val/images`` with ``val/val_annotations.txt``.

``label`` is the wnid, ``target`` its index in this reader's ``classes`` (sorted wnids), and
``imagenet_indices[target]`` its ImageNet-1k index (None for a wnid outside ImageNet-1k), which the
``softmax`` affinity needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from dataonomy.datasets.base import (
    IMAGE_EXTENSIONS,
    Sample,
    SampleDataset,
    Sampling,
    require_dir,
)
from dataonomy.datasets.registry import register_dataset
from dataonomy.errors import DataonomyError
from dataonomy.wordnet import imagenet_classes, imagenet_index, load_wordnet, parse_synset_mapping

LAYOUTS = ("auto", "ilsvrc", "tiny")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _is_wnid(name: str) -> bool:
    return len(name) == 9 and name[0] == "n" and name[1:].isdigit()


def _find_upwards(start: Path, name: str, levels: int = 4) -> Path | None:
    for d in [start, *list(start.parents)[:levels]]:
        if (d / name).is_file():
            return d / name
    return None


@register_dataset("imagenet")
class ImageNet(SampleDataset):
    """An ImageNet-style source pool as a torchvision dataset.

    Args:
        root: the ILSVRC train folder (``<wnid>/`` folders), its parent, or a Tiny ImageNet root.
        split: ``train`` or ``val`` (``val`` only in the Tiny layout, which labels it).
        layout: ``auto``, ``ilsvrc`` or ``tiny``.
        classes: wnids to read (default: every class found).
        sampling: :class:`~dataonomy.datasets.base.Sampling`: ``images_per_class`` samples at most N images
            per class, seeded (the normal way to compute class-level statistics without reading 1.28 M
            images; each class's draw depends only on (``seed``, wnid)); ``skip_bad`` decodes every image now
            and drops bad ones with a warning and a count.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        layout: str = "auto",
        classes: Sequence[str] | None = None,
        sampling: Sampling | None = None,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
    ):
        sampling = sampling or Sampling()
        root = require_dir(Path(root), "ImageNet root")
        if layout not in LAYOUTS:
            raise DataonomyError(f"--layout '{layout}': must be one of {', '.join(LAYOUTS)}")
        if split not in ("train", "val"):
            raise DataonomyError(f"--split '{split}': must be train or val")
        if layout == "auto":
            layout = "tiny" if (root / "wnids.txt").is_file() else "ilsvrc"
        if layout == "tiny":
            files, names = self._tiny(root, split)
        else:
            if split != "train":
                raise DataonomyError(
                    f"--split {split}: the ILSVRC layout reader reads the train folders only"
                )
            files, names = self._ilsvrc(root)
        if classes is not None:
            unknown = [w for w in classes if w not in files]
            if unknown:
                raise DataonomyError(
                    f"unknown wnid '{unknown[0]}': not a class of {root} ({len(unknown)} unknown of {len(classes)})"
                )
            files = {w: files[w] for w in classes}
        wnids = sorted(files)
        samples = []
        for target, wnid in enumerate(wnids):
            for p in sampling.subsample(files[wnid], wnid):
                samples.append(Sample(path=p, label=wnid, target=target))
        if not samples:
            raise DataonomyError(f"{root}: no images found ({layout} layout, split {split})")
        samples = sampling.drop_bad(samples)
        self.layout = layout
        self.images_per_class = sampling.images_per_class
        index = imagenet_index()
        self.imagenet_indices = [index.get(w) for w in wnids]
        super().__init__(
            root,
            samples,
            wnids,
            [names.get(w, w) for w in wnids],
            transform=transform,
            target_transform=target_transform,
        )

    @staticmethod
    def _tiny(root: Path, split: str) -> tuple[dict[str, list[Path]], dict[str, str]]:
        wnids = [w.strip() for w in (root / "wnids.txt").read_text().split() if w.strip()]
        for w in wnids:
            if not _is_wnid(w):
                raise DataonomyError(f"{root / 'wnids.txt'}: '{w}' is not a wnid")
        names = {}
        words = root / "words.txt"
        if words.is_file():
            wanted = set(wnids)
            for line in words.read_text(encoding="utf-8").splitlines():
                wnid, _, lemmas = line.partition("\t")
                if wnid in wanted:
                    names[wnid] = lemmas.split(",")[0].strip()
        files: dict[str, list[Path]] = {}
        if split == "train":
            for w in wnids:
                folder = root / "train" / w / "images"
                if not folder.is_dir():
                    raise DataonomyError(f"{folder}: class folder listed in wnids.txt is missing")
                files[w] = _images(folder)
        else:
            ann = root / "val" / "val_annotations.txt"
            if not ann.is_file():
                raise DataonomyError(f"{ann}: validation annotations not found")
            files = {w: [] for w in wnids}
            for lineno, line in enumerate(ann.read_text().splitlines(), start=1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) < 2 or parts[1] not in files:
                    raise DataonomyError(f"{ann}:{lineno}: unknown wnid in {line.strip()!r}")
                files[parts[1]].append(root / "val" / "images" / parts[0])
            files = {w: sorted(v) for w, v in files.items()}
        return files, names

    @staticmethod
    def _ilsvrc(root: Path) -> tuple[dict[str, list[Path]], dict[str, str]]:
        if (root / "train").is_dir() and not any(_is_wnid(d.name) for d in root.iterdir() if d.is_dir()):
            root = root / "train"
        mapping_file = _find_upwards(root, "LOC_synset_mapping.txt")
        pairs = parse_synset_mapping(mapping_file.read_text()) if mapping_file else list(imagenet_classes())
        names = {w: n.split(",")[0].strip() for w, n in pairs}
        dirs = sorted(d for d in root.iterdir() if d.is_dir())
        if not dirs:
            raise DataonomyError(f"{root}: no <wnid> class folders found")
        files = {}
        wordnet = None
        for d in dirs:
            if d.name not in names:
                # Accept any real WordNet synset (ImageNet-21k pools); reject typos and stray folders.
                wordnet = wordnet or load_wordnet()
                if d.name not in wordnet:
                    raise DataonomyError(f"{d}: unknown wnid '{d.name}' (not an ImageNet/WordNet class)")
                names[d.name] = wordnet.name(d.name)
            files[d.name] = _images(d)
        return files, names
