"""The config is validated before any job: defaults filled, unknown keys and bad values rejected by name."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TEST_CONFIG, TINY_COCO, run_snakemake

TEST_CONFIG = yaml.safe_load(TEST_CONFIG.read_text())
TEST_CONFIG["coco"]["root"] = str(TINY_COCO)  # the dry runs happen in an empty temporary folder


def _dry_run(tmp_path: Path, cfg: dict, *targets: str):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return run_snakemake("-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n", "--cores", "1", *targets,
                         "--configfile", str(path), check=False)


def _set(cfg: dict, dotted: str, value):
    *parents, last = dotted.split(".")
    node = cfg
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return cfg


# (what is wrong, dotted key to set, value, a regex the error message must match)
MALFORMED = [
    ("unknown top-level key", "vqgann", {}, r"vqgann"),
    ("unknown nested key", "vqgan.train.stepz", 10, r"stepz"),
    ("wrong type", "vqgan.train.steps", "many", r"'many' is not of type 'integer'"),
    ("negative size", "datasets.coco_tiny.train_images", -5, r"datasets\.coco_tiny.*train_images|-5 is less than the minimum"),
    ("unknown game", "datasets.atari_tiny.games", ["Pong", "NotAGame"], r"datasets\.atari_tiny\.games.*NotAGame"),
    ("resolution not a multiple of f", "datasets.coco_tiny.resolution", 33, r"datasets\.coco_tiny\.resolution.*33.*multiple"),
    ("unknown dataset kind", "datasets.coco_tiny.kind", "imagenet", r"'imagenet' is not one of \['coco', 'atari'\]"),
    ("unknown quantizer", "vqgan.quantizer.kind", "fsq", r"'fsq' is not one of"),
    ("bad mixed precision", "vqgan.train.mixed_precision", "fp8", r"'fp8' is not one of"),
    ("val fraction out of range", "datasets.atari_tiny.val_fraction", 1.5, r"1\.5 is greater than or equal to the maximum"),
    ("unknown key in a dataset", "datasets.atari_tiny.frame_skipp", 4, r"frame_skipp"),
    ("unknown key in a per-dataset override", "datasets.coco_tiny.vqgan", {"train": {"lr_": 1.0}}, r"datasets\.coco_tiny\.vqgan.*lr_"),
    ("bad type in a per-dataset override", "datasets.coco_tiny.vqgan", {"train": {"steps": 1.5}}, r"datasets\.coco_tiny\.vqgan\.train\.steps"),
    ("dataset name with a slash", "datasets", {"a/b": {"kind": "coco", "resolution": 32}}, r"a/b"),
    ("coco root wrong type", "coco.root", 7, r"7 is not of type 'string', 'null'"),
    ("atari dataset without games", "datasets.atari_tiny.games", [], r"should be non-empty|too short"),
]


@pytest.mark.parametrize("what,key,value,pattern", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_config_is_rejected_naming_the_key(tmp_path, what, key, value, pattern):
    cfg = _set(copy.deepcopy(TEST_CONFIG), key, value)
    proc = _dry_run(tmp_path, cfg)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"{what}: config was accepted:\n{out[-2000:]}"
    assert re.search(pattern, out), f"{what}: error does not match {pattern!r}:\n{out[-3000:]}"
    assert "Job stats" not in out, f"{what}: a DAG was built before the config was rejected"


def test_test_config_builds_the_dag_of_both_datasets(tmp_path):
    proc = _dry_run(tmp_path, TEST_CONFIG)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for rule in ("prepare_coco", "collect_atari"):
        assert re.search(rf"^{rule}\s+1$", out, re.M), f"{rule} missing from the DAG:\n{out}"
    # the local COCO root is used as it is: nothing to download
    assert "download_coco" not in out


def test_default_config_downloads_coco_when_no_root_is_given(tmp_path):
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    proc = _dry_run(tmp_path, cfg)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"^download_coco\s+1$", proc.stdout, re.M)


def test_schema_defaults_reach_the_rules(tmp_path):
    # the dry run prints the shell commands: omitted keys arrive at the CLI with their schema defaults
    proc = _dry_run(tmp_path, TEST_CONFIG)
    assert '"sticky_actions": 0.25' in proc.stdout
    assert '"frame_skip": 4' in proc.stdout


def _schema_keys(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, sub in node.get("properties", {}).items():
        dotted = f"{prefix}.{key}" if prefix else key
        if "properties" in sub:  # a section: its leaves are documented
            keys += _schema_keys(sub, dotted)
        else:
            keys.append(dotted)
    return keys


def test_config_readme_documents_every_key():
    readme = (REPO / "config" / "README.md").read_text()
    schemas = REPO / "workflow" / "schemas"
    missing = [k for k in _schema_keys(yaml.safe_load((schemas / "config.schema.yaml").read_text()))
               if f"`{k}`" not in readme and k not in ("datasets",)]
    for kind in ("coco", "atari"):
        for k in _schema_keys(yaml.safe_load((schemas / f"dataset_{kind}.schema.yaml").read_text())):
            if f"`{k}`" not in readme:
                missing.append(f"datasets.<{kind}>.{k}")
    assert not missing, f"config/README.md does not document: {missing}"
