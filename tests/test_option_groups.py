"""Option groups: a config holds the split and the layout as groups, while the command line, the constructor's
keyword arguments and config.json keep one flat name per option."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from dataonomy.cli_options import opt
from dataonomy.datasets.options import DefectLayout
from dataonomy.datasets.splits import SplitOptions
from dataonomy.option_groups import flat_names, group, grouped, to_flat
from transfer.config import FinetuneConfig, config_from_dict
from transfer.stage_config import SplitConfig, read_stage_config

BASE = dict(base="scratch", arch="small_cnn", data="/nowhere")


def test_flat_options_land_in_their_groups_and_come_back_flat():
    flat = FinetuneConfig(**BASE, folds=3, fold=1, masks="m", mask_suffix="_GT")
    nested = FinetuneConfig(
        **BASE, split=SplitOptions(folds=3, fold=1), layout=DefectLayout(masks="m", mask_suffix="_GT")
    )
    assert flat == nested
    assert flat.split.folds == 3 and flat.split.fold == 1 and flat.layout.masks == "m"
    saved = flat.to_dict()
    assert "split" not in saved and "layout" not in saved  # config.json stays one name per option
    assert (
        saved["folds"] == 3 and saved["fold"] == 1 and saved["masks"] == "m" and saved["mask_suffix"] == "_GT"
    )
    assert config_from_dict(json.loads(json.dumps(saved))) == flat


def test_a_flat_option_beside_its_group_changes_that_group():
    config = FinetuneConfig(**BASE, split=SplitOptions(folds=3, fold=1), fold=2)
    assert config.split == SplitOptions(folds=3, fold=2)
    from transfer.config import replace

    moved = replace(config, fold=0, masks="m")
    assert moved.split.fold == 0 and moved.split.folds == 3 and moved.layout.masks == "m"
    assert config.split.fold == 2  # the original is untouched


def test_a_saved_config_is_checked_by_its_flat_names(tmp_path):
    bad = FinetuneConfig(**BASE).to_dict() | {"folds": "three"}
    with pytest.raises(Exception, match='field folds is "three"; expected'):
        config_from_dict(bad, "run/config.json")
    with pytest.raises(Exception, match="unknown config field.*split"):
        config_from_dict(FinetuneConfig(**BASE).to_dict() | {"split": {"folds": 3}}, "run/config.json")
    # transfer split keeps its own seed default in its own group, saved flat under the same name
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"config": SplitConfig(data=str(tmp_path), folds=3, fold=2).to_dict()}))
    assert read_stage_config(path, "split")["split_seed"] == 0
    assert read_stage_config(path, "split")["fold"] == 2


@dataclass(kw_only=True)
class Cut:
    fold: int = opt(0, "The fold.")


@dataclass(kw_only=True)
class Clash:
    fold: int = opt(0, "Also a fold.")
    cut: Cut = group(Cut)


def test_an_option_declared_twice_is_refused_when_the_class_is_made():
    with pytest.raises(TypeError, match="Clash: option\\(s\\) fold declared twice"):
        grouped(Clash)
    assert flat_names(FinetuneConfig).count("fold") == 1
    assert to_flat(SplitConfig(data="/nowhere"))["val_fraction"] == 0.2
