"""Manifest schema, validation errors and fingerprints."""

from __future__ import annotations

import json

import pytest

from dataonomy.errors import DataonomyError
from dataonomy.manifest import (
    SCHEMA,
    fingerprint_files,
    fingerprint_json,
    read_manifest,
    validate_manifest,
    write_manifest,
)


def _manifest(k=2):
    return {
        "schema": SCHEMA,
        "target": {"dataset": "dagm", "classes": ["Class1"]},
        "source": {"dataset": "imagenet"},
        "backbone": {"name": "efficientnet_lite0"},
        "parameters": {"k": k},
        "selected": [
            {
                "wnid": "n01443537",
                "name": "goldfish",
                "source_index": 0,
                "images": 10,
                "affinity": {"Class1": 0.6},
            },
            {
                "wnid": "n01440764",
                "name": "tench",
                "source_index": 1,
                "images": 10,
                "affinity": {"Class1": 0.4},
            },
        ],
        "solver": {"status": "Optimal"},
        "greedy": {},
        "fingerprint": "x",
    }


def test_roundtrip(tmp_path):
    p = write_manifest(tmp_path / "m.json", _manifest())
    assert read_manifest(p) == _manifest()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: m.update(schema="other/1"), "schema is 'other/1'"),
        (lambda m: m.pop("solver"), "'solver' is missing"),
        (lambda m: m["selected"][1].update(wnid="n01443537"), "appears twice"),
        (lambda m: m["selected"][0].pop("images"), r"selected\[0\].images is missing"),
        (lambda m: m["parameters"].update(k=3), "parameters.k is 3 but 2 classes"),
    ],
)
def test_invalid_manifests(tmp_path, mutate, message):
    m = _manifest()
    mutate(m)
    with pytest.raises(DataonomyError, match=message):
        validate_manifest(m)
    with pytest.raises(DataonomyError, match=message):
        write_manifest(tmp_path / "m.json", m)
    assert not (tmp_path / "m.json").exists()


def test_unreadable_manifest(tmp_path):
    p = tmp_path / "m.json"
    p.write_text("{not json")
    with pytest.raises(DataonomyError, match="not a readable JSON manifest"):
        read_manifest(p)
    with pytest.raises(DataonomyError, match="manifest not found"):
        read_manifest(tmp_path / "none.json")


def test_fingerprints(tmp_path, dagm_class1_test):
    files = sorted(dagm_class1_test.glob("*.PNG"))[:5]
    a = fingerprint_files(files, dagm_class1_test)
    assert a == fingerprint_files(list(reversed(files)), dagm_class1_test)
    assert a != fingerprint_files(files[:4], dagm_class1_test)
    # Same content elsewhere: same fingerprint; changed content: different.
    for f in files:
        (tmp_path / f.name).write_bytes(f.read_bytes())
    copies = sorted(tmp_path.glob("*.PNG"))
    assert fingerprint_files(copies, tmp_path) == a
    copies[0].write_bytes(copies[0].read_bytes() + b"\0")
    assert fingerprint_files(copies, tmp_path) != a
    assert fingerprint_json({"a": 1, "b": [1, 2]}) == fingerprint_json(json.loads('{"b": [1, 2], "a": 1}'))
