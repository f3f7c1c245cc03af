"""``probe``: the frozen-trunk probe (:mod:`transfer.probe`), a per-location logistic regression on a pretrained
trunk's features fitted from the masks; it answers as a segdec model does (an image logit and a defect map at
1/output_stride), so it is scored, localised, exported and used by ``predict`` as segdec is. Its training is a
closed-form fit (``one_pass``: the task's ``fit``), not the SGD loop."""

from __future__ import annotations

from torch import nn

from transfer.heads.segdec import SegdecHead, check_output_stride


class ProbeHead(SegdecHead):
    name = "probe"
    record_fields = ("output_stride",)
    options = ("output_stride",)

    def check_config(self, config) -> None:
        check_output_stride(config.output_stride)

    def build(self, record, weights: dict) -> nn.Module:
        from transfer.probe import saved_probe

        return saved_probe(record.arch, record.output_stride, weights, str(record.path))

    one_pass = True

    def make_task(self, config):
        """The probe's task (:class:`transfer.probe.ProbeTask`): segdec's folds and validation, a one-pass fit."""
        from transfer.probe import ProbeTask

        return ProbeTask(config)
