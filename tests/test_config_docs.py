"""config/README.md is generated from the schemas (every key's default and meaning) and its template (the prose):
one source, checked here to be up to date and complete."""
from __future__ import annotations

import shutil

import pytest
from conftest import REPO

from vqgan.config import docs
from vqgan.config.schema import node

GENERIC = ("kind", "resolution", "vqgan", "transformer", "sample")  # every dataset kind's: one table shows them


def leaves(schema: str, path: str = "") -> list[str]:
    out = []
    for key, sub in node(path, schema).get("properties", {}).items():
        dotted = f"{path}.{key}" if path else key
        out += leaves(schema, dotted) if "properties" in sub else [dotted]
    return out


def test_config_readme_is_what_the_schemas_and_template_give():
    template = (REPO / docs.TEMPLATE).read_text()
    assert (REPO / docs.OUTPUT).read_text() == docs.generate(template), (
        "config/README.md is stale: run `python -m vqgan.config.docs` from the repository root")


def test_every_key_is_documented_exactly_once():
    shown = docs.documented_keys((REPO / docs.TEMPLATE).read_text())
    expected = {
        "config": [k for k in leaves("config") if k != "datasets"],  # datasets: its entries' schemas below
        "dataset_coco": leaves("dataset_coco"),
        "dataset_atari": [k for k in leaves("dataset_atari") if k not in GENERIC],
    }
    for schema, keys in expected.items():
        twice = sorted({k for k in shown[schema] if shown[schema].count(k) > 1})
        assert not twice, f"{schema}: shown in more than one table: {twice}"
        assert sorted(shown[schema]) == sorted(keys), (
            f"{schema}: undocumented {sorted(set(keys) - set(shown[schema]))}, "
            f"unknown {sorted(set(shown[schema]) - set(keys))}")


def test_the_check_fails_on_a_stale_readme_and_passes_on_a_fresh_one(tmp_path):
    template, out = tmp_path / "README.md.in", tmp_path / "README.md"
    shutil.copy(REPO / docs.TEMPLATE, template)
    assert docs.main(["--template", str(template), "--out", str(out)]) == 0
    assert docs.main(["--check", "--template", str(template), "--out", str(out)]) == 0
    template.write_text(template.read_text().replace("<!-- keys: fid -->", "<!-- keys: fid.n -->"))
    assert docs.main(["--check", "--template", str(template), "--out", str(out)]) == 1


def test_a_key_without_description_or_an_unknown_schema_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="unknown schema 'nope'"):
        docs.generate("<!-- keys nope: x -->")
    sub = node("fid.seed")
    monkeypatch.delitem(sub, "description")
    with pytest.raises(ValueError, match="fid.seed has no description"):
        docs.generate("<!-- keys: fid -->")


def test_defaults_and_required_keys_are_shown_as_the_schema_says():
    table = docs.generate("<!-- keys dataset_atari: games val_fraction crop -->")
    assert "| `games` | required |" in table
    assert "| `val_fraction` | `0.2` |" in table and "| `crop` | `null` |" in table
