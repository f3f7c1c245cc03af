"""What a ``transfer pretrain``/``finetune`` command line asks for, as config fields.

Without ``--config`` the options are the whole config; with it, the file's fields are the defaults and only the
options given explicitly replace them (:func:`dataonomy.cli_utils.with_config`'s rule). :func:`pretrain_fields`
and :func:`finetune_fields` give the new run's fields; the ``*_requested`` functions the fields ``--resume``
checks against the run it continues (with ``--config``, the whole merged file).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from dataonomy.errors import DataonomyError
from transfer.config import ARCH_DEFAULTS


@dataclass
class TrainRequest:
    """The options named after config fields (name -> value), the names given explicitly, and the fields of a
    ``--config`` file (None without one)."""

    options: dict
    given: set[str]
    saved: dict | None

    def merged(self) -> dict:
        """The file's fields replaced by the options given (every option without a file)."""
        fields = dict(self.saved or {})
        fields.update({k: v for k, v in self.options.items() if self.saved is None or k in self.given})
        return fields

    def given_options(self) -> dict:
        return {k: v for k, v in self.options.items() if k in self.given}

    def forget_arch_defaults(self, fields: dict) -> None:
        """With --config and another architecture, its own defaults replace the file's (the old ones may not
        fit)."""
        if self.saved is not None and fields.get("arch") != self.saved["arch"]:
            for name in ARCH_DEFAULTS:
                if name not in self.given:
                    fields.pop(name, None)


def pretrain_fields(request: TrainRequest, manifest: Path | None, source_root: Path | None) -> dict:
    """The new pretrain run's fields; --manifest brings its selected classes."""
    from transfer.data import read_manifest_wnids

    fields = request.merged()
    request.forget_arch_defaults(fields)
    if manifest is not None:
        fields.update(manifest=str(manifest.resolve()), wnids=read_manifest_wnids(manifest))
    if source_root is not None:
        fields["source_root"] = str(source_root.resolve())
    if "manifest" not in fields or "source_root" not in fields:
        raise DataonomyError("--manifest and --source-root are required (unless --resume or --config)")
    return fields


def pretrain_requested(request: TrainRequest, manifest: Path | None, source_root: Path | None) -> dict:
    """The fields --resume holds the run to."""
    if request.saved is not None:
        return pretrain_fields(request, manifest, source_root)  # the whole file must agree with the run's
    requested = request.given_options()
    for name, value in (("manifest", manifest), ("source_root", source_root)):
        if value is not None:
            requested[name] = str(value.resolve())
    return requested


def defect_set_fields(source) -> dict:
    """A :class:`transfer.data.DefectData` as the fine-tuning config's data fields ({} for None)."""
    if source is None:
        return {}
    fields = {k: v for k, v in asdict(source).items() if k != "root"} | {"data": source.root}
    if source.defect_classes is not None:
        fields["defect_classes"] = list(source.defect_classes)
    return fields


@dataclass
class BaseRequest:
    """Finetune's --base, --arch and --allow-incomplete-base (they imply the architecture and normalisation)."""

    base: str | None
    arch: str | None
    allow_incomplete: bool = False


def finetune_fields(request: TrainRequest, source, base: BaseRequest) -> dict:
    """The new fine-tuning run's fields: --base's architecture and normalisation, the defect set ``source``
    (:class:`transfer.data.DefectData`), the options."""
    from transfer.checkpoint import finetune_base_fields

    fields, saved, given = dict(request.saved or {}), request.saved, request.given
    if saved is None or {"base", "arch"} & given:
        new_base = base.base if saved is None or "base" in given else saved["base"]
        if new_base is None or source is None:
            raise DataonomyError("--base and --data (or --dagm) are required (unless --resume or --config)")
        # imagenet/scratch keep the file's architecture; a pretrain run as base brings its own.
        keep_arch = saved is not None and "arch" not in given and new_base in ("imagenet", "scratch")
        new_arch = saved["arch"] if keep_arch else base.arch
        fields.update(finetune_base_fields(new_base, new_arch, base.allow_incomplete))
        request.forget_arch_defaults(fields)
    fields.update(defect_set_fields(source))
    fields.update(request.given_options() if saved is not None else request.options)
    return fields


def finetune_requested(request: TrainRequest, source, base: BaseRequest) -> dict:
    """The fields --resume holds the run to."""
    if request.saved is not None:
        return finetune_fields(request, source, base)  # the whole file must agree with the run's
    requested = request.given_options() | defect_set_fields(source)
    if base.arch is not None:
        requested["arch"] = base.arch
    return requested


__all__ = [
    "BaseRequest",
    "TrainRequest",
    "defect_set_fields",
    "finetune_fields",
    "finetune_requested",
    "pretrain_fields",
    "pretrain_requested",
]
