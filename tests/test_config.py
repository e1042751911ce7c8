"""The config is checked before any job: defaults filled, unknown keys and bad values rejected in one line that
names the key (or the file and line); what only the data can tell fails first thing in the job."""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import BIN, REPO, TEST_CONFIG, TINY_COCO, repo_copy, run_snakemake

TEST_CONFIG = yaml.safe_load(TEST_CONFIG.read_text())
TEST_CONFIG["coco"]["root"] = str(TINY_COCO)  # the dry runs happen in an empty temporary folder


def _dry_run(tmp_path: Path, cfg: dict, *targets: str):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return run_snakemake("-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n", "--cores", "1", *targets,
                         "--configfile", str(path), check=False)


DELETE = object()


def _set(cfg: dict, dotted: str, value):
    *parents, last = dotted.split(".")
    node = cfg
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return cfg


# -- many configs, one process --------------------------------------------------------------------------------
# A case writes its config files into an empty working directory and returns the ones to pass with --configfile
# (none: the Snakefile's default config/config.yaml there). tests/snakemake_batch.py builds the DAG of every case
# in one process, as `snakemake -n` does: ~0.2 s a case instead of ~3 s for a new process.


def _write(workdir: Path, cfg: dict) -> list[str]:
    path = workdir / "experiment.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return [str(path)]


def setting(**changes):
    """The CI experiment with keys changed (`vqgan__train__steps=20.0` sets vqgan.train.steps), via --configfile."""
    def make(workdir: Path) -> list[str]:
        cfg = copy.deepcopy(TEST_CONFIG)
        for key, value in changes.items():
            _set(cfg, key.replace("__", "."), value)
        return _write(workdir, cfg)
    return make


# A small valid experiment written by hand, for the mistakes that live in the text (duplicate keys, floats
# written as such, syntax); the controls check that it builds the DAG as it is.
MINIMAL = f"""\
coco:
  root: {TINY_COCO}
datasets:
  coco_tiny:
    kind: coco
    resolution: 32
    train_images: 40
    val_images: 20
vqgan:
  model:
    ch: 16
    ch_mult: [1, 2]
    attn_resolutions: []
    z_channels: 16
  loss:
    perceptual_weight: 0.0
  train:
    steps: 20
    batch_size: 8
    warmup_steps: 2
    checkpoint_every: 10
"""


def text(old: str = "", new: str = "", *, whole: str | None = None, default: bool = False, name: str = "exp.yaml"):
    """MINIMAL with `old` replaced by `new` (or the text `whole`), given with --configfile, or written as the
    working directory's config/config.yaml (`default`), which the workflow reads itself before Snakemake does."""
    if whole is None:
        assert old in MINIMAL, old
        whole = MINIMAL.replace(old, new, 1)

    def make(workdir: Path) -> list[str]:
        path = workdir / "config" / "config.yaml" if default else workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(whole)
        return [] if default else [str(path)]
    return make


ANNOTATIONS = ("annotations/instances_train2017.json", "annotations/instances_val2017.json")
FULL_ROOT = (*ANNOTATIONS, "train2017", "val2017")


def coco_root(*parts: str, categories=None):
    """The CI experiment on a COCO root holding only `parts` of the tiny one (symbolic links)."""
    def make(workdir: Path) -> list[str]:
        root = workdir / "coco"
        root.mkdir()
        for part in parts:
            (root / part).parent.mkdir(parents=True, exist_ok=True)
            (root / part).symlink_to(TINY_COCO / part)
        cfg = _set(copy.deepcopy(TEST_CONFIG), "coco.root", str(root))
        if categories is not None:
            cfg["datasets"]["coco_tiny"]["categories"] = categories
        return _write(workdir, cfg)
    return make


# (what is wrong, how the config is made, a regex the one-line error must match)
MALFORMED = [
    # -- the schema: keys, types, ranges
    ("unknown top-level key", setting(vqgann={}), r"vqgann"),
    ("unknown nested key", setting(vqgan__train__stepz=10), r"'stepz' was unexpected.*did you mean 'steps'"),
    ("wrong type", setting(vqgan__train__steps="many"), r"'many' is not of type 'integer'"),
    ("negative size", setting(datasets__coco_tiny__train_images=-5),
     r"datasets\.coco_tiny\.train_images: -5 is less than the minimum"),
    ("unknown game", setting(datasets__atari_tiny__games=["Pong", "NotAGame"]), r"datasets\.atari_tiny\.games.*NotAGame"),
    ("resolution not a multiple of f", setting(datasets__coco_tiny__resolution=33),
     r"datasets\.coco_tiny\.resolution.*33.*multiple"),
    ("unknown dataset kind", setting(datasets__coco_tiny__kind="imagenet"), r"'imagenet' is not one of \['coco', 'atari'\]"),
    ("unknown quantizer", setting(vqgan__quantizer__kind="fsq"), r"vqgan\.quantizer\.kind: 'fsq' is not one of"),
    ("bad precision", setting(vqgan__train__precision="fp8"), r"'fp8' is not one of"),
    ("Accelerate's no", setting(vqgan__train__precision="no"),
     r"vqgan\.train\.precision: 'no' is not one of.*\(write fp32 for full precision\)"),
    ("YAML's no", setting(transformer__train__precision=False), r"transformer\.train\.precision.*write fp32"),
    ("the old key", setting(transformer__train__mixed_precision="bf16"),
     r"'mixed_precision' was unexpected.*did you mean 'precision'"),
    ("fp16 in the VQGAN", setting(vqgan__train__precision="fp16"), r"vqgan\.train\.precision: 'fp16' is not one of"),
    ("val fraction out of range", setting(datasets__atari_tiny__val_fraction=1.5),
     r"1\.5 is greater than or equal to the maximum"),
    ("val fraction zero", setting(datasets__atari_tiny__val_fraction=0),
     r"datasets\.atari_tiny\.val_fraction: 0 is less than or equal to the minimum"),
    ("unknown key in a dataset", setting(datasets__atari_tiny__frame_skipp=4), r"frame_skipp.*did you mean 'frame_skip'"),
    ("unknown key in a per-dataset override", setting(datasets__coco_tiny__vqgan={"train": {"lr_": 1.0}}),
     r"datasets\.coco_tiny\.vqgan.*lr_"),
    ("bad type in a per-dataset override", setting(datasets__coco_tiny__vqgan={"train": {"steps": 1.5}}),
     r"datasets\.coco_tiny\.vqgan\.train\.steps"),
    ("dataset name with a slash", setting(datasets={"a/b": {"kind": "coco", "resolution": 32}}), r"a/b"),
    ("coco root wrong type", setting(coco__root=7), r"coco\.root: 7 is not of type 'string', 'null'"),
    ("atari dataset without games", setting(datasets__atari_tiny__games=[]),
     r"datasets\.atari_tiny\.games: .*(should be non-empty|too short)"),
    # a file without `datasets:` may be an overlay given alone: the message says both (config/offline.yaml)
    ("no datasets key", setting(datasets=DELETE), r"no `datasets:`, so no experiment; an overlay .* needs `datasets:`"),
    ("no datasets", setting(datasets={}), r"config key datasets: \{\} should be non-empty"),
    ("dataset entry not a mapping", setting(datasets__coco_tiny=5), r"datasets\.coco_tiny: 5 is not of type 'object'"),
    ("section not a mapping", setting(vqgan=5), r"config key vqgan: 5 is not of type 'object'"),
    ("boolean for an integer", setting(vqgan__train__steps=True), r"vqgan\.train\.steps: True is not of type 'integer'"),
    # -- variants: their overrides are merged after the dataset's, validated, and an error names the variant
    ("unknown key in a variant's override", setting(variants__paper__vqgan__train={"lr_": 1.0}),
     r"variants\.paper\.vqgan\.train \(for dataset \w+\): .*'lr_' was unexpected.*did you mean 'lr'"),
    ("bad value in a variant's override", setting(variants__paper__vqgan__quantizer={"kind": "fsq"}),
     r"variants\.paper\.vqgan\.quantizer\.kind \(for dataset \w+\): 'fsq' is not one of"),
    ("variant overriding a non-overridable section", setting(variants__paper__fid={"n": 10}),
     r"variants\.paper: .*'fid' was unexpected"),
    ("variant name with an underscore", setting(variants={"my_recipe": {}}), r"my_recipe"),
    ("variant with both sample counts", setting(variants__paper__sample={"n_per_class": 5}),
     r"variants\.paper\.sample\.n_per_class and n_samples \(for dataset \w+\)"),
    ("sample seeds empty", setting(sample__seeds=[]), r"sample\.seeds: \[\] (should be non-empty|is too short)"),
    ("sample seed twice", setting(sample__seeds=[1, 1]), r"sample\.seeds: \[1, 1\] has non-unique elements"),
    # -- integers written as floats (JSON Schema counts 20.0 as an integer; we do not)
    ("steps as a float", setting(vqgan__train__steps=20.0),
     r"vqgan\.train\.steps: 20\.0 is not of type 'integer' \(write 20, without the decimal point\)"),
    ("resolution as a float", setting(datasets__coco_tiny__resolution=32.0),
     r"datasets\.coco_tiny\.resolution: 32\.0 is not of type 'integer'"),
    ("float in a per-dataset override", setting(datasets__atari_tiny__vqgan={"train": {"batch_size": 8.0}}),
     r"datasets\.atari_tiny\.vqgan\.train\.batch_size: 8\.0 is not of type 'integer'"),
    ("float in a list of integers", setting(vqgan__model__ch_mult=[1, 2.0]),
     r"vqgan\.model\.ch_mult\.1: 2\.0 is not of type 'integer'"),
    ("float crop", setting(datasets__atari_tiny__crop=[0.0, 0, 160, 160]),
     r"datasets\.atari_tiny\.crop\.0: 0\.0 is not of type 'integer'"),
    ("float fid.n", setting(fid__n=20.0), r"fid\.n: 20\.0 is not of type 'integer'"),
    ("float download workers", setting(coco__download__workers=2.0),
     r"coco\.download\.workers: 2\.0 is not of type 'integer'"),
    ("float written in the file", text("steps: 20", "steps: 20.0"), r"vqgan\.train\.steps: 20\.0 is not of type 'integer'"),
    ("1e-4 is text to YAML", text("    batch_size: 8\n", "    batch_size: 8\n    lr: 1e-4\n"),
     r"vqgan\.train\.lr: '1e-4' is not of type 'number' \(YAML reads 1e-4 as text"),
    # -- Atari across keys (atari_collect.config's own rules, run before any job)
    ("a game twice in two spellings", setting(datasets__atari_tiny__games=["Pong", "pong"]),
     r"datasets\.atari_tiny\.games .*'Pong' and 'pong', the same game"),
    ("game_policy for a game not in games", setting(datasets__atari_tiny__game_policy={"Breakout": {"name": "random"}}),
     r"datasets\.atari_tiny\.game_policy\.Breakout .*not in games"),
    ("crop below the screen", setting(datasets__atari_tiny__crop=[10, 0, 201, 160]),
     r"datasets\.atari_tiny\.crop = \[10, 0, 201, 160\]: must lie inside the native 210x160"),
    ("crop of zero height", setting(datasets__atari_tiny__crop=[10, 10, 0, 100]), r"datasets\.atari_tiny\.crop .*210x160"),
    ("one frame per game", setting(datasets__atari_tiny__frames_per_game=1),
     r"datasets\.atari_tiny\.frames_per_game: 1 is less than the minimum of 2"),
    ("RAM cells for Pong", setting(datasets__atari_tiny__policy={"cell": "ram"}),
     r"datasets\.atari_tiny\.policy\.cell = 'ram': RAM cells are only defined for MsPacman"),
    ("explore budget below the frames", setting(datasets__atari_tiny__policy={"name": "go_explore", "budget_steps": 10}),
     r"datasets\.atari_tiny\.policy\.budget_steps = 10: must be >= frames_per_game"),
    # -- sizes that would fail inside a job
    ("batch larger than the dataset", setting(datasets__coco_tiny__vqgan={"train": {"batch_size": 64}}),
     r"datasets\.coco_tiny\.vqgan\.train\.batch_size: a micro-batch of 64 .*40 images"),
    ("transformer batch larger than the dataset", setting(transformer__train__batch_size=512),
     r"datasets\.coco_tiny\.transformer\.train\.batch_size: a micro-batch of 512"),
    ("grad_accum not dividing the batch", setting(vqgan__train__grad_accum=3),
     r"datasets\.coco_tiny\.vqgan\.train\.grad_accum: 3 does not divide vqgan\.train\.batch_size = 8"),
    ("fid.min_images above fid.n", setting(fid__min_images=30), r"fid\.min_images: 30 is more than fid\.n = 20"),
    ("fewer samples than fid.min_images", setting(fid__min_images=15, sample__n_samples=10),
     r"datasets\.coco_tiny\.sample: 10 samples in all, fewer than fid\.min_images = 15"),
    ("val split smaller than fid.min_images", setting(fid__n=100, fid__min_images=30, sample__n_samples=40),
     r"datasets\.coco_tiny: the val split holds at most 20 images"),
    ("both sample counts", setting(sample__n_per_class=5), r"datasets\.coco_tiny\.sample\.n_per_class and n_samples"),
    # -- paths and the COCO root
    ("weights_dir with a wildcard", setting(weights_dir="resources/{ds}"), r"weights_dir: 'resources/\{ds\}' has braces"),
    ("empty weights_dir", setting(weights_dir=""), r"weights_dir: '' (should be non-empty|is too short)"),
    ("coco.root that does not exist", setting(coco__root="/nonexistent/coco"),
     r"coco\.root: /nonexistent/coco is not a folder"),
    ("coco.root without annotations", coco_root("train2017", "val2017"),
     r"coco\.root: \S+/coco lacks annotations/instances_train2017\.json, annotations/instances_val2017\.json;"),
    ("coco.root without val2017", coco_root(*ANNOTATIONS, "train2017"), r"coco\.root: \S+/coco lacks val2017/;"),
    ("unknown COCO category", coco_root(*FULL_ROOT, categories=["dog", "dgo"]),
     r"datasets\.coco_tiny\.categories: 'dgo' is not a category of \S+instances_train2017\.json \(did you mean 'dog'"),
    ("unknown COCO category, before download", setting(coco__root=None, datasets__coco_tiny__categories=["zebras"]),
     r"datasets\.coco_tiny\.categories: 'zebras' is not a category of COCO 2017 \(did you mean 'zebra'"),
    # -- the files themselves
    ("a dataset name twice", text("datasets:\n", "datasets:\n  coco_tiny: {kind: coco, resolution: 64}\n"),
     r"exp\.yaml:5: duplicate key datasets\.coco_tiny \(first at line 4\)"),
    ("a section twice", text(whole=MINIMAL + "vqgan:\n  train: {steps: 5}\n"),
     r"exp\.yaml:22: duplicate key vqgan \(first at line 9\)"),
    ("a nested key twice", text("    steps: 20\n", "    steps: 20\n    steps: 30\n"),
     r"exp\.yaml:19: duplicate key vqgan\.train\.steps \(first at line 18\)"),
    ("a key twice in JSON", text(whole='{"datasets": {"a": {"kind": "coco", "resolution": 32}}, "datasets": {}}',
                                 name="exp.json"), r"exp\.json:1: duplicate key datasets"),
    ("YTE template", text(whole="__use_yte__: true\n" + MINIMAL), r"exp\.yaml:1: `__use_yte__` turns on YTE templating"),
    ("a Python tag", text("ch_mult: [1, 2]", "ch_mult: !!python/tuple [1, 2]"),
     r"exp\.yaml:12:\d+: could not determine a constructor for the tag .*python/tuple.* \(plain YAML only\)"),
    ("an unknown COCO category, nothing close", setting(coco__root=None, datasets__coco_tiny__categories=["qqq"]),
     r"'qqq' is not a category of COCO 2017 \(its names: person, bicycle, .*, toothbrush\)$"),
    ("default config: syntax error", text("ch_mult: [1, 2]", "ch_mult: [1, 2", default=True),
     r"config file config/config\.yaml:13:\d+: expected ',' or '\]'.* \(while parsing a flow sequence at line 12\)"),
    ("default config: a tab", text("    batch_size: 8", "\tbatch_size: 8", default=True),
     r"config/config\.yaml:19:1: .*indents with spaces, not tabs"),
    ("default config: empty", text(whole="", default=True), r"config/config\.yaml: empty"),
    ("default config: a list", text(whole="- datasets\n- vqgan\n", default=True),
     r"config/config\.yaml:1: the top level is a list"),
    ("default config: a key twice", text("    steps: 20\n", "    steps: 20\n    steps: 30\n", default=True),
     r"config/config\.yaml:19: duplicate key vqgan\.train\.steps"),
    # Files given with --configfile are parsed by Snakemake before the Snakefile runs: Snakemake's message, no line
    # (config/README.md says so, and how to find the line).
    ("--configfile: syntax error (Snakemake's message)", text("ch_mult: [1, 2]", "ch_mult: [1, 2"),
     r"not valid JSON or YAML"),
    ("--configfile: a tab (Snakemake's message)", text("    batch_size: 8", "\tbatch_size: 8"), r"not valid JSON or YAML"),
    ("--configfile: a list (Snakemake's message)", text(whole="- datasets\n"), r"keys at top level"),
    ("object weight on COCO", setting(vqgan__loss__object_weight=5.0),
     r"datasets\.coco_tiny\.vqgan\.loss\.object_weight: 5\.0 needs object boxes \(objects\.csv\)"),
]

CONTROLS = [
    ("control: the CI experiment", setting()),
    ("control: MINIMAL", text(whole=MINIMAL)),
    ("control: MINIMAL as the default config", text(whole=MINIMAL, default=True)),
    ("control: a COCO root with every part", coco_root(*FULL_ROOT, categories=["dog", "cat"])),
]

# What a tester's configs (issue #15) got past the DAG, to fail inside a job, some after minutes.
LATE = (
    "coco.root that does not exist", "coco.root without annotations", "unknown COCO category",
    "game_policy for a game not in games", "crop below the screen", "one frame per game",
    "batch larger than the dataset", "grad_accum not dividing the batch", "steps as a float",
    "resolution as a float", "float in a per-dataset override",
)


def _run_batch(root: Path, cases, execute: bool = False) -> dict:
    spec, workdirs = [], {}
    for i, (case_id, make, *_) in enumerate(cases):
        workdirs[case_id] = root / f"case{i:02d}"
        workdirs[case_id].mkdir()
        spec.append({"id": case_id, "workdir": str(workdirs[case_id]), "configfiles": make(workdirs[case_id]),
                     "execute": execute})
    (root / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "snakemake_batch.py"), str(root / "spec.json"),
                           str(root / "results.json")], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((root / "results.json").read_text())
    for case_id, r in results.items():
        r["workdir"] = workdirs[case_id]
    return results


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict:
    return _run_batch(tmp_path_factory.mktemp("dry"), MALFORMED + CONTROLS)


def test_there_are_enough_distinct_malformed_configs():
    assert len(MALFORMED) >= 30
    assert len({m[0] for m in MALFORMED}) == len(MALFORMED)
    assert set(LATE) <= {m[0] for m in MALFORMED}


@pytest.mark.parametrize("what", [c[0] for c in CONTROLS])
def test_controls_build_the_dag(outcomes, what):
    r = outcomes[what]
    assert r["ok"], f"{what}: {r['error']}"


@pytest.mark.parametrize("what,pattern", [(m[0], m[2]) for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_config_is_rejected_before_any_job_naming_the_key(outcomes, what, pattern):
    r = outcomes[what]
    assert not r["ok"], f"{what}: the config was accepted"
    assert r["stage"] in ("configfile", "workflow"), f"{what}: rejected only at stage {r['stage']}: {r['error']}"
    message = r["error"].split(": ", 1)[1]
    assert re.search(pattern, message), f"{what}: the error does not match {pattern!r}:\n{message}"
    assert "\n" not in message.strip(), f"{what}: more than one line:\n{message}"


def test_late_mistakes_now_fail_before_any_job_when_run_for_real(tmp_path):
    # Not -n: had a check been missing, prepare_coco / collect_atari / train_vqgan would start here.
    results = _run_batch(tmp_path, [m for m in MALFORMED if m[0] in LATE], execute=True)
    assert len(results) == len(LATE) == 11
    for what, r in results.items():
        assert not r["ok"] and r["stage"] == "workflow", f"{what}: {r}"
        written = sorted({"logs", "results", "benchmarks", "resources"} & {p.name for p in r["workdir"].iterdir()})
        assert not written, f"{what}: a job ran and wrote {written}"


def test_a_config_error_is_one_line_on_the_command_line(tmp_path):
    # the real command line, with the default config file of the working directory
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(MINIMAL.replace("    steps: 20\n", "    steps: 20\n    steps: 3\n"))
    proc = run_snakemake("-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n", "--cores", "1", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert re.search(r"^config file config/config\.yaml:19: duplicate key vqgan\.train\.steps \(first at line 18\); "
                     r"Snakemake would silently keep only the last one$", out, re.M), out[-3000:]
    assert "Job stats" not in out


@pytest.mark.parametrize("what,old,new,line", [
    ("a syntax error", "ch_mult: [1, 2]", "ch_mult: [1, 2", 13),
    ("a tab", "    batch_size: 8", "\tbatch_size: 8", 19),
    ("a key twice", "    steps: 20\n", "    steps: 20\n    steps: 30\n", 19),
])
def test_a_configfile_mistake_stops_the_command_line_before_any_job(tmp_path, what, old, new, line):
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINIMAL.replace(old, new, 1))
    proc = run_snakemake("-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n", "--cores", "1",
                         "--configfile", str(bad), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out, out[-3000:]
    if what == "a key twice":  # YAML itself accepts it; the workflow's strict reader names file:line
        assert re.search(rf"^config file {re.escape(str(bad))}:{line}: duplicate key vqgan\.train\.steps \(first at "
                         rf"line {line - 1}\)", out, re.M), out[-3000:]
        return
    # Snakemake 9 parses --configfile files itself, before any code of the workflow runs, and its message names
    # neither the file nor the line (snakemake/common/configfile.py). Should this fail, Snakemake names them now:
    # drop the work-around from config/README.md.
    assert "Config file is not valid JSON or YAML" in out and f"line {line}" not in out, out[-3000:]
    # the work-around config/README.md gives, as written there, names both
    doc = re.search(r'`python -c "(import yaml; [^"]+)"`', (REPO / "config" / "README.md").read_text()).group(1)
    shown = subprocess.run([sys.executable, "-c", doc.replace("FILE", str(bad))], capture_output=True, text=True)
    assert f'"{bad}", line {line}, column' in shown.stderr, shown.stderr[-2000:]


# -- what only the data can tell: first thing in the job ------------------------------------------------------

# The job's command (`python -m vqgan.train.launch ...`, as the rules run it) with `import torch` made to fail: the
# batch check must come before anything imports torch (5-9 s), or the job dies with an ImportError instead.
WITHOUT_TORCH = ("import runpy, sys; sys.modules['torch'] = None; "
                 "runpy.run_module('vqgan.train.launch', run_name='__main__', alter_sys=True)")


@pytest.mark.parametrize("stage,world,pattern", [
    ("vqgan", "1", r"^error: vqgan\.train\.batch_size=8: one micro-batch .* takes 8 samples, more than the 4 images "
                   r"of \S+/train; lower batch_size"),
    ("vqgan", "3", r"^error: train\.batch_size=8 \(global\) must be a multiple of world size 3"),
    ("transformer", "1", r"^error: transformer\.train\.batch_size=8: one micro-batch .* takes 8 samples, more than "
                         r"the 4 train sequences of \S+/codes;"),
])
def test_batch_larger_than_the_data_fails_first_thing_in_the_job(tmp_path, stage, world, pattern):
    if stage == "vqgan":
        from vqgan.data.dataset import write_split

        data = tmp_path / "train"
        write_split(data, np.zeros((4, 16, 16, 3), np.uint8), pd.DataFrame({"source_id": range(4)}), {"source": "t"})
        cfg = {"model": {"ch": 8, "ch_mult": [1, 2], "attn_resolutions": [], "z_channels": 8},
               "loss": {"perceptual_weight": 0.0}, "train": {"batch_size": 8, "steps": 2}}
        args = ["--data", str(data)]
    else:
        data = tmp_path / "codes"
        data.mkdir()
        for split in ("train", "val"):
            np.save(data / f"{split}.npy", np.zeros((4, 2, 2), np.int16))
            np.save(data / f"{split}_labels.npy", np.zeros(4, np.int64))
        (data / "codes.json").write_text(json.dumps({"n_codes": 16, "grid": [2, 2], "n_classes": 1,
                                                     "class_names": ["coco"], "counts": {"train": 4, "val": 4}}))
        cfg = {"model": {"n_layer": 1, "n_head": 1, "n_embd": 8}, "train": {"batch_size": 8, "steps": 2}}
        args = ["--codes", str(data)]
    state, out = tmp_path / "state", tmp_path / "out"
    cmd = [sys.executable, "-c", WITHOUT_TORCH, "--num-processes", "0", "--", "-m", f"vqgan.train.{stage}",
           "--config", json.dumps(cfg), *args, "--out", str(out), "--state-dir", str(state)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, "WORLD_SIZE": world}, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(pattern, lines[0]), proc.stderr[-3000:]
    assert not state.exists() and not out.exists(), "the job touched its state or outputs before failing"
    print(f"{stage} (WORLD_SIZE={world}) failed after {seconds:.2f} s (interpreter start included), torch not imported")


def test_the_launcher_runs_the_job_when_the_batch_fits(tmp_path):
    """The control of the test above: the same job with a batch the data holds gets past the check and trains
    (and then needs torch: with it blocked, the ImportError shows the check let the job through)."""
    from vqgan.data.dataset import write_split

    data = tmp_path / "train"
    write_split(data, np.zeros((4, 16, 16, 3), np.uint8), pd.DataFrame({"source_id": range(4)}), {"source": "t"})
    cfg = {"train": {"batch_size": 4, "grad_accum": 2}}
    cmd = [sys.executable, "-c", WITHOUT_TORCH, "--num-processes", "0", "--", "-m", "vqgan.train.vqgan",
           "--config", json.dumps(cfg), "--data", str(data), "--out", str(tmp_path / "o"), "--state-dir",
           str(tmp_path / "s")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "import of torch halted" in proc.stderr, proc.stderr[-3000:]


def test_category_names_are_read_from_the_end_of_a_big_annotation_file(tmp_path):
    from vqgan.data.coco import COCO_2017_CATEGORIES, category_names

    tiny = TINY_COCO / "annotations" / "instances_train2017.json"
    assert tuple(category_names(tiny)) == COCO_2017_CATEGORIES
    # official layout: images and annotations first (hundreds of MB), categories last
    big = tmp_path / "instances_train2017.json"
    big.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in range(20000)],
                               "annotations": [], "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}]}))
    assert category_names(big, chunk=4096) == ["dog", "cat"]
    # and where the categories come first, the scan finds them too
    first = tmp_path / "first.json"
    first.write_text(json.dumps({"categories": [{"id": 1, "name": "kite"}], "images": [{"id": i} for i in range(5000)]}))
    assert category_names(first, chunk=4096) == ["kite"]


def test_test_config_builds_the_dag_of_both_datasets(tmp_path):
    proc = _dry_run(tmp_path, TEST_CONFIG)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for rule in ("prepare_coco", "collect_atari"):
        assert re.search(rf"^{rule}\s+1$", out, re.M), f"{rule} missing from the DAG:\n{out}"
    # the local COCO root is used as it is: nothing to download
    assert "download_coco" not in out


def _job_blocks(dry_run_out: str, rule: str) -> dict[str, str]:
    """variant -> the dry run's listing of its `rule` job on the first dataset (its input line, shell command...)."""
    jobs = {}
    for block in dry_run_out.split("\nrule ")[1:]:
        name = block.split(":", 1)[0]
        m = re.search(rf"wildcards: ds={next(iter(TEST_CONFIG['datasets']))}, variant=(\w+)", block)
        if name == rule and m:
            jobs[m.group(1)] = block
    return jobs


def _eval_jobs(dry_run_out: str) -> dict[str, str]:
    """variant -> the `input:` line of its eval_vqgan job on the first dataset."""
    return {v: re.search(r"^\s*input: (.*)$", b, re.M).group(1)
            for v, b in _job_blocks(dry_run_out, "eval_vqgan").items()}


def test_lpips_weights_are_an_input_of_eval_exactly_when_lpips_is_scored(tmp_path):
    cfg = copy.deepcopy(TEST_CONFIG)
    assert cfg["vqgan"]["eval"]["lpips"] is False  # the CI experiment: no conversion per run
    (tmp_path / "off").mkdir()
    proc = _dry_run(tmp_path / "off", cfg)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fetch_weights" not in proc.stdout
    # on for one variant only (its training stays without the perceptual loss): only its eval waits for the weights
    _set(cfg, "variants.paper.vqgan.eval", {"lpips": True})
    (tmp_path / "on").mkdir()
    proc = _dry_run(tmp_path / "on", cfg)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"^fetch_weights\s+1$", proc.stdout, re.M)
    jobs = _eval_jobs(proc.stdout)
    assert set(jobs) == {"paper", "ours"}
    assert "resources/weights/" in jobs["paper"] and "resources/weights/" not in jobs["ours"]


def test_inference_precision_reaches_each_stage_of_its_variant_only(tmp_path):
    cfg = copy.deepcopy(TEST_CONFIG)
    # the CI experiment leaves them at the schema's auto, which the jobs resolve: the DAG holds the literal `auto`,
    # so results moved to another machine rerun nothing; the paper variant sets all three to bf16
    _set(cfg, "variants.paper.vqgan.eval", {"precision": "bf16"})
    _set(cfg, "variants.paper.vqgan.encode", {"precision": "bf16"})
    _set(cfg, "variants.paper.sample", {"decode_precision": "bf16"})
    proc = _dry_run(tmp_path, cfg)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for variant, want in (("paper", "bf16"), ("ours", "auto")):
        assert f"--precision {want}" in _job_blocks(proc.stdout, "encode")[variant]
        assert f'"precision": "{want}"' in _job_blocks(proc.stdout, "eval_vqgan")[variant]
        sample_jobs = [b for b in proc.stdout.split("\nrule ")[1:] if b.startswith("sample:")
                       and f"variant={variant}" in b]
        assert sample_jobs and all(f'"decode_precision": "{want}"' in b for b in sample_jobs)


def test_default_config_downloads_coco_when_no_root_is_given(tmp_path):
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    proc = _dry_run(tmp_path, cfg)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"^download_coco\s+1$", proc.stdout, re.M)


def test_the_report_gets_a_coverage_figure_exactly_for_explored_datasets(tmp_path):
    # the default experiment explores Ms. Pac-Man (game_policy): its coverage figure is a target of `all`
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["coco"]["root"] = str(TINY_COCO)
    (tmp_path / "default").mkdir()
    proc = _dry_run(tmp_path / "default", cfg)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"^plot_coverage\s+1$", proc.stdout, re.M)
    assert "results/plots/coverage_atari64.png" in proc.stdout
    # the same dataset with the game played sticky-random: no Go-Explore, no coverage.png, no figure
    del cfg["datasets"]["atari64"]["game_policy"]
    (tmp_path / "sticky").mkdir()
    proc = _dry_run(tmp_path / "sticky", cfg)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "plot_coverage" not in proc.stdout


def test_schema_defaults_reach_the_rules(tmp_path):
    # the dry run prints the shell commands: omitted keys arrive at the CLI with their schema defaults
    proc = _dry_run(tmp_path, TEST_CONFIG)
    assert '"sticky_actions": 0.25' in proc.stdout
    assert '"frame_skip": 4' in proc.stdout


# -- the default experiment is the measured one; the offline overlay changes only where things come from ---------


def _experiment(*files: Path):
    """The checked experiment of `--configfile files...`, merged as Snakemake merges them (nested keys update)."""
    from snakemake.utils import update_config

    from atari_collect.config import DATASET_RULES
    from vqgan.config.experiment import check_experiment

    cfg: dict = {}
    for f in files:
        update_config(cfg, yaml.safe_load(f.read_text()))
    return check_experiment(cfg, {"atari": DATASET_RULES})


def test_the_offline_overlay_trains_exactly_what_the_default_config_trains():
    plain = _experiment(REPO / "config" / "config.yaml")
    offline = _experiment(REPO / "config" / "config.yaml", REPO / "config" / "offline.yaml")
    assert offline.sections == plain.sections, "config/offline.yaml changes a job's params"
    assert offline.config == plain.config
    overlay = yaml.safe_load((REPO / "config" / "offline.yaml").read_text())
    assert set(overlay) <= {"coco", "weights_dir"}, f"offline.yaml sets more than sources: {sorted(overlay)}"
    assert set(overlay.get("coco") or {}) <= {"root"}


def test_the_default_config_is_the_recipe_docs_results_measured():
    # docs/results.md: `paper` trains with LPIPS (900 steps), `ours` without it, 2600 steps on Atari
    exp = _experiment(REPO / "config" / "config.yaml")
    for ds in exp.datasets:
        assert exp.section(ds, "paper", "vqgan")["loss"]["perceptual_weight"] == 1.0, ds
        assert exp.section(ds, "ours", "vqgan")["loss"]["perceptual_weight"] == 0.0, ds
        assert exp.section(ds, "paper", "vqgan")["train"]["steps"] == 900, ds
    assert exp.section("atari64", "ours", "vqgan")["train"]["steps"] == 2600


def test_an_overlay_given_alone_says_to_put_an_experiment_before_it(tmp_path):
    clone = repo_copy(tmp_path / "clone")
    proc = run_snakemake("-n", "--cores", "1", "--configfile", "config/offline.yaml", cwd=clone, check=False)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "--configfile config/config.yaml config/offline.yaml" in err, err[-2000:]
    assert "is a required property" not in err, err[-2000:]
