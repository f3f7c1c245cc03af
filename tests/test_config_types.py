"""A config file with a field of the wrong type (issue 29, part 3) is refused in one line naming the file, the
field, the value and the type expected, in every stage that takes --config: never a traceback, and never the
constructor's own words ("'<' not supported between instances of 'str' and 'int'")."""

from __future__ import annotations

import json

import pytest

from dataonomy.cli import app as dataonomy_app
from dataonomy.cli_utils import run_app
from dataonomy.errors import DataonomyError
from dataonomy.io import check_field_types
from transfer.cli import app as transfer_app
from transfer.config import FinetuneConfig

CASES = [
    # (app, command, config fields, the field, what the error expects)
    (dataonomy_app, "select", {"k": "ten"}, "k", "a whole number"),
    (transfer_app, "split", {"kind": "split", "data": "d", "val_fraction": "a fifth"}, "val_fraction", "a number"),
    (transfer_app, "pretrain", {"kind": "pretrain", "manifest": "m.json", "epochs": "three"}, "epochs", "a whole number"),
    (transfer_app, "finetune", {"kind": "finetune", "base": "scratch", "data": "d", "epochs": "three"}, "epochs", "a whole number"),
    (transfer_app, "evaluate", {"kind": "evaluate", "model": "run", "split": 3}, "split", "a string"),
    (transfer_app, "localize", {"kind": "localize", "model": "run", "alpha": [0.5]}, "alpha", "a number"),
    (transfer_app, "rootcause", {"kind": "rootcause", "images": "i", "window": "ten"}, "window", "a whole number"),
]  # fmt: skip


@pytest.mark.parametrize("app, command, fields, field, expected", CASES, ids=[c[1] for c in CASES])
def test_wrong_typed_field_is_one_line_naming_it(app, command, fields, field, expected, tmp_path, capsys):
    config = tmp_path / f"{command}.json"
    config.write_text(json.dumps(fields))
    out = [] if command in ("select", "evaluate") else ["--out", str(tmp_path / "out")]
    code = run_app(app, [command, "--config", str(config), *out])
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    value = json.dumps(fields[field])
    assert f"--config {config}: field {field} is {value}; expected {expected}" in lines[0], lines[0]


def test_field_types_accept_what_json_holds_and_refuse_the_rest():
    ok = {"epochs": 3, "lr": 1, "crop_size": None, "classes": ["a", "b"], "patches": False, "data": "x"}
    check_field_types(FinetuneConfig, ok, "c.json")  # an int where a float is declared is a number
    for bad, expected in (
        ({"epochs": 3.5}, "field epochs is 3.5; expected a whole number"),
        ({"epochs": True}, "field epochs is true; expected a whole number"),
        ({"classes": ["a", 2]}, 'field classes is ["a", 2]; expected a list of a string or null'),
        ({"patches": "no"}, 'field patches is "no"; expected true or false'),
        ({"crop_size": "192"}, 'field crop_size is "192"; expected a whole number or null'),
    ):
        with pytest.raises(DataonomyError, match=None) as caught:
            check_field_types(FinetuneConfig, bad, "c.json")
        assert str(caught.value) == f"c.json: {expected}"
