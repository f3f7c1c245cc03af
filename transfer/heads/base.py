"""What differs between kinds of trained defect model, in one object per kind: a :class:`Head`.

A head says how a model of its kind is rebuilt from its saved record, the rule that turns the model's output
into a defect probability, how it scores a batch of images, how images reach it, and what its ONNX export
holds. ``transfer.checkpoint``, ``evaluate``, ``localize_run`` and ``export`` ask the run's head
(:func:`head_of`) instead of branching on the kind, so a kind is changed (or added) in its own module.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dataonomy.registry import Registry

#: How images reach a model when a set is scored (:attr:`Head.image_input`).
IMAGE_INPUTS = ("resized", "native", "as_is")


class Head:
    """One kind of defect model, as used once trained.

    ``record_fields``: what a saved model of this kind records besides every model's fields (``record_defaults``:
    those it may lack).
    ``image_input``: ``resized`` (every image resized to the run's input size, batched), ``native`` (each image
    at its own size, its longer side scaled to the input size; batched by size) or ``as_is`` (the image as it
    is, one at a time: a patch model slides over it). ``localize_modes``: the ``--mode`` values of ``transfer
    localize`` it supports, the first the default. ``onnx_outputs``/``onnx_axes``/``onnx_meaning``: its ONNX
    outputs, their dynamic axes (the input ``image``'s included) and what they mean (stored in the file).
    ``maps_in_one_pass``: one forward pass gives both the image's score and its defect map
    (:meth:`score_and_map`), what ``transfer predict`` needs.
    """

    name: str = ""
    record_fields: tuple[str, ...] = ()
    #: Fields a saved model of this kind may lack (saved before the kind recorded them), with the value they had.
    record_defaults: dict = {}
    image_input: str = "resized"
    localize_modes: tuple[str, ...] = ()
    onnx_outputs: tuple[str, ...] = ("logits",)
    onnx_axes: dict = {"image": {0: "batch"}, "logits": {0: "batch"}}
    onnx_meaning: str = ""
    maps_in_one_pass: bool = False

    def build(self, record, weights: dict) -> nn.Module:
        """The model a saved record describes, with ``weights`` loaded (eval mode is the caller's)."""
        raise NotImplementedError

    def defect_probability(self, output) -> torch.Tensor:
        """The rule from the model's output for a batch to each input's defect probability, float32 (B,)."""
        raise NotImplementedError

    def score_images(self, loaded, images: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Defect probabilities (B,) of normalised images (B, 3, H, W) on the model's device."""
        with torch.no_grad():
            return self.defect_probability(loaded.model(images))

    def score_and_map(self, outputs, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(defect probabilities (B,), defect maps (B, H, W) at ``size``) from the model's outputs for a batch,
        in :attr:`onnx_outputs` order (PyTorch's or ONNX Runtime's, as tensors): one rule for both runtimes."""
        raise NotImplementedError(f"a {self.name} model gives no defect map in one pass")

    #: A kind fitted in one pass instead of the SGD loop (the probe): its task has ``fit(model, progress) ->
    #: dict``, and the training loop validates and saves it as any run.
    one_pass: bool = False
    #: ``transfer finetune --head NAME`` trains it (False: it is reached another way, ``patch`` by ``--patches``).
    finetune_choice: bool = True
    #: It trains and scores images at their own size when ``--image-size`` is not given (no square resize, no
    #: Inception auxiliary head).
    native_resolution: bool = False
    #: The fine-tuning fields (:class:`transfer.config.FinetuneConfig`) only kinds that list them read: one that
    #: is off by default, switched on for a kind that does not list it, is refused, naming the kinds that do.
    options: tuple[str, ...] = ()

    def check_config(self, config) -> None:
        """Refuse values of this kind's own :attr:`options` that it cannot train with (a one-line
        :class:`~dataonomy.errors.DataonomyError` naming the option)."""

    def make_task(self, config):
        """The training task of a fine-tuning run of this kind (what :mod:`transfer.training`'s loop asks of a
        run: data, model, loss, validation, what ``best.pt`` records)."""
        raise NotImplementedError(f"a {self.name} model has no training task here")

    def examples(self, loaded, fold, n: int) -> torch.Tensor | list[torch.Tensor]:
        """Up to ``n`` real examples of ``fold`` (a defect set) as the model takes them, normalised, half of them
        defective where there are defects: one batch, or a list of batches where their sizes differ (what an
        export is traced on and checked with)."""
        chosen = balanced_indices(np.asarray(fold.targets), n)
        return torch.stack([loaded.transforms()(fold[int(i)][0]) for i in chosen])


def balanced_indices(targets: np.ndarray, n: int) -> np.ndarray:
    """Indices of up to n examples, half defective where possible, spread over the fold (deterministic)."""
    defective, clean = np.flatnonzero(targets == 1), np.flatnonzero(targets == 0)
    k = min(len(defective), n // 2)
    spread = lambda idx, m: idx[np.linspace(0, len(idx) - 1, m).round().astype(int)] if m else idx[:0]  # noqa: E731
    return np.sort(np.r_[spread(defective, k), spread(clean, min(len(clean), n - k))])


HEADS: Registry[Head] = Registry("head", "unknown model kind '{name}' (known: {known})")


def register_head(head: Head, replace: bool = False) -> Head:
    """Make ``head`` the one of kind ``head.name``."""
    if head.image_input not in IMAGE_INPUTS:
        raise ValueError(f"head {head.name!r}: image_input must be one of {', '.join(IMAGE_INPUTS)}")
    return HEADS.add(head.name, head, replace)


def list_heads() -> list[str]:
    return HEADS.names()


def get_head(name: str) -> Head:
    return HEADS.get(name)


def finetune_heads() -> list[Head]:
    """The kinds ``transfer finetune --head`` trains, by name."""
    return [HEADS.get(name) for name in HEADS.names() if HEADS.get(name).finetune_choice]


def head_name(head: str | None, input: str | None) -> str:
    """The kind of a saved model from its ``head`` and ``input`` fields: models saved before heads had names of
    their own record a patch classifier as ``head = classify, input = patch``."""
    if head in (None, "classify") and input == "patch":
        return "patch"
    return head or "classify"


def head_of(record) -> Head:
    """The head of a saved model (a :class:`transfer.checkpoint.ModelRecord`)."""
    return get_head(head_name(record.head, record.input))
