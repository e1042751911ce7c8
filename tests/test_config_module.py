"""vqgan.config called directly, without Snakemake: strict files, schema validation with defaults, the merge of
every section (top level -> dataset -> variant), the cross-key checks and the messages that name the key."""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, TEST_CONFIG, TINY_COCO

from atari_collect.config import DATASET_RULES
from vqgan.config import schema
from vqgan.config.experiment import DEFAULT_VARIANT, check_experiment, deep_merge
from vqgan.config.files import ConfigError, read_config_file

RULES = {"atari": DATASET_RULES}
BASE = yaml.safe_load(TEST_CONFIG.read_text())
BASE["coco"]["root"] = str(TINY_COCO)


def cfg(**changes) -> dict:
    """The CI experiment with dotted keys changed (`vqgan__train__steps=3` sets vqgan.train.steps)."""
    out = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return out


def rejected(config: dict) -> str:
    with pytest.raises(ConfigError) as e:
        check_experiment(config, RULES)
    message = str(e.value)
    assert "\n" not in message
    return message


# -- files -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,pattern", [
    ("datasets:\n  a: {kind: coco, resolution: 32}\n  a: {kind: coco, resolution: 64}\n",
     r"x.yaml:3: duplicate key datasets.a \(first at line 2\)"),
    ("datasets:\n\ta: 1\n", r"x.yaml:2:1: .*tabs"),
    ("__use_yte__: true\ndatasets: {}\n", r"x.yaml:1: `__use_yte__`"),
    ("", r"x.yaml: empty"),
    ("- a\n- b\n", r"x.yaml:1: the top level is a list"),
    ("datasets: !!python/name:os.system\n", r"plain YAML only"),
])
def test_a_bad_config_file_is_named_with_its_line(tmp_path, text, pattern):
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=pattern):
        read_config_file(path)


def test_json_indented_with_tabs_is_read_and_its_duplicate_keys_refused(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{\n\t"datasets": {"a": {"kind": "coco", "resolution": 32}}\n}')
    assert read_config_file(path)["datasets"]["a"]["resolution"] == 32
    path.write_text('{\n\t"fid": {},\n\t"fid": {}\n}')
    with pytest.raises(ConfigError, match="duplicate key 'fid'"):
        read_config_file(path)


# -- schema ----------------------------------------------------------------------------------------------------


def test_defaults_come_from_the_schema_nested_sections_filled():
    train = schema.defaults("vqgan.train")
    assert train["steps"] == schema.node("vqgan.train")["properties"]["steps"]["default"]
    assert schema.defaults("vqgan")["train"] == train
    assert "object_class_balance" not in schema.defaults("vqgan.loss")  # no default: absent means off


def test_a_section_validated_alone_keeps_what_is_given_and_names_a_bad_key():
    given = {"top_k": 5}
    schema.validate(given, schema.section_schema("sample"), "sample")
    assert given["top_k"] == 5 and given["temperature"] == schema.defaults("sample")["temperature"]
    with pytest.raises(ConfigError, match=r"config key transformer.train: .*'stepz'.*did you mean 'steps'"):
        schema.validate({"stepz": 3}, schema.section_schema("transformer.train"), "transformer.train")


@pytest.mark.parametrize("change,pattern", [
    ({"vqgan__train__steps": 20.0}, r"vqgan.train.steps: 20.0 is not of type 'integer' \(write 20,"),
    ({"vqgan__train__lr": "1e-4"}, r"vqgan.train.lr: .*signed exponent"),
    ({"fid__nn": 3}, r"did you mean 'n'"),
])
def test_schema_errors_name_the_key_with_a_hint(change, pattern):
    message = rejected(cfg(**change))
    assert re.search(pattern, message), message


# -- the experiment --------------------------------------------------------------------------------------------


def test_sections_merge_top_level_then_dataset_then_variant():
    c = cfg(datasets__coco_tiny__vqgan={"train": {"steps": 17, "lr": 1.0e-3}},
            variants={"paper": {"vqgan": {"train": {"steps": 19}}}, "ours": {}})
    exp = check_experiment(c, RULES)
    assert exp.variants == ["paper", "ours"]
    assert exp.section("coco_tiny", "paper", "vqgan")["train"]["steps"] == 19  # the variant wins
    assert exp.section("coco_tiny", "paper", "vqgan")["train"]["lr"] == 1.0e-3  # the dataset's stays
    assert exp.section("coco_tiny", "ours", "vqgan")["train"]["steps"] == 17
    assert exp.section("atari_tiny", "ours", "vqgan")["train"]["steps"] == BASE["vqgan"]["train"]["steps"]
    # every default filled, in the config and in the merged sections
    assert c["fid"]["kid_subsets"] == schema.defaults("fid")["kid_subsets"]
    assert exp.section("atari_tiny", "ours", "sample")["temperature"] == schema.defaults("sample")["temperature"]
    # the JSON a job gets holds only the sub-sections asked for
    assert set(json.loads(exp.section_json("coco_tiny", "ours", "vqgan", keys=("eval",)))) == {"eval"}


def test_a_config_without_variants_runs_one_default_variant():
    c = cfg()
    del c["variants"]
    assert check_experiment(c, RULES).variants == [DEFAULT_VARIANT]


def test_the_collection_entry_leaves_out_later_stages():
    c = cfg(datasets__coco_tiny__vqgan={"train": {"steps": 17}})
    exp = check_experiment(c, RULES)
    assert "vqgan" not in exp.collection_entry("coco_tiny") and "eval_sets" not in exp.collection_entry("atari_tiny")
    assert exp.collection_entry("atari_tiny")["games"] == ["Pong", "MsPacman"]


@pytest.mark.parametrize("change,pattern", [
    # an error in a variant's override names the override and the dataset it was merged for
    ({"variants": {"paper": {"transformer": {"model": {"n_embd": 33}}}}},
     r"^config key variants.paper.transformer.model.n_embd \(for dataset coco_tiny\): n_head=2 does not divide "
     r"n_embd=33 "),
    ({"variants": {"paper": {"vqgan": {"train": {"lr_": 1.0}}}}},
     r"^config key variants.paper.vqgan.train \(for dataset coco_tiny\): .*'lr_'"),
    ({"datasets__coco_tiny__resolution": 33}, r"datasets.coco_tiny.resolution: resolution=33 is not divisible by f=2, "
                                              r"the downsampling factor .* make it a multiple of f"),
    ({"vqgan__train__grad_accum": 3}, r"datasets.coco_tiny.vqgan.train.grad_accum: 3 does not divide"),
    ({"vqgan__train__batch_size": 64}, r"datasets.coco_tiny.vqgan.train.batch_size: a micro-batch of 64 .* 40 "),
    ({"vqgan__loss__object_weight": 5.0}, r"datasets.coco_tiny.vqgan.loss.object_weight: 5.0 needs object boxes"),
    ({"sample__n_per_class": 4}, r"config keys datasets.coco_tiny.sample.n_per_class and n_samples: set one"),
    ({"fid__min_images": 30}, r"fid.min_images: 30 is more than fid.n = 20"),
    ({"weights_dir": "w/{ds}"}, r"weights_dir: 'w/\{ds\}' has braces"),
    ({"datasets__coco_tiny__categories": ["dgo"]}, r"datasets.coco_tiny.categories: 'dgo' is not a category .*'dog'"),
    ({"coco__root": "/nonexistent/coco"}, r"coco.root: /nonexistent/coco is not a folder"),
    # the collector's own rules, named by their full path
    ({"datasets__atari_tiny__games": ["Pong", "pong"]}, r"datasets.atari_tiny.games = \['Pong', 'pong'\]: names"),
    ({"datasets__atari_tiny__crop": [0, 0, 300, 160]}, r"datasets.atari_tiny.crop = \[0, 0, 300, 160\]: must lie"),
])
def test_cross_key_mistakes_name_the_key(change, pattern):
    message = rejected(cfg(**change))
    assert re.search(pattern, message), message


def test_object_weight_is_accepted_where_the_collector_records_boxes():
    c = cfg(datasets__atari_tiny__vqgan={"loss": {"object_weight": 5.0}})
    assert check_experiment(c, RULES).section("atari_tiny", "ours", "vqgan")["loss"]["object_weight"] == 5.0


def test_dataset_rules_are_the_callers():
    """A kind's rules come in as an argument: without them the entry gets the schema and cross-key checks only,
    and with them their error is named by its full key."""
    c = cfg(datasets__atari_tiny__crop=[0, 0, 300, 160])
    check_experiment(copy.deepcopy(c), {})  # the collector's crop rule is not vqgan's to know

    class Refuse:
        def check(self, entry):
            err = ValueError("no")
            err.key, err.value, err.what = "games.0", entry["games"][0], "not today"
            raise err

        def has_object_boxes(self, games):
            return False

    with pytest.raises(ConfigError, match=r"^config key datasets.atari_tiny.games.0 = 'Pong': not today$"):
        check_experiment(copy.deepcopy(c), {"atari": Refuse()})


def test_deep_merge_leaves_its_inputs_alone():
    base, over = {"a": {"b": 1, "c": [1]}}, {"a": {"b": 2}}
    assert deep_merge(base, over) == {"a": {"b": 2, "c": [1]}}
    assert base == {"a": {"b": 1, "c": [1]}}


# -- issue #28, third round: what the config alone decides fails before any job, naming the key -----------------


@pytest.mark.parametrize("change,key", [
    ({"vqgan__quantizer__n_codes": 2**31}, "vqgan.quantizer.n_codes"),
    ({"vqgan__quantizer__code_dim": 2**20}, "vqgan.quantizer.code_dim"),
    ({"vqgan__model__ch": 2**16}, "vqgan.model.ch"),
    ({"vqgan__model__z_channels": 2**20}, "vqgan.model.z_channels"),
    ({"vqgan__model__num_res_blocks": 1000}, "vqgan.model.num_res_blocks"),
    ({"vqgan__loss__disc_ch": 2**16}, "vqgan.loss.disc_ch"),
    ({"transformer__model__n_embd": 2**20}, "transformer.model.n_embd"),
    ({"transformer__model__n_layer": 10**6}, "transformer.model.n_layer"),
    ({"vqgan__train__batch_size": 2**31}, "vqgan.train.batch_size"),
    ({"vqgan__eval__batch_size": 2**31}, "vqgan.eval.batch_size"),
    ({"sample__batch_size": 2**31}, "sample.batch_size"),
    ({"fid__n": 2**31}, "fid.n"),
])
def test_sizes_that_allocate_memory_have_an_upper_bound(change, key):
    message = rejected(cfg(**change))
    assert re.search(rf"config key {re.escape(key)}: \d+ is greater than the maximum of \d+", message), message


@pytest.mark.parametrize("change,key", [
    ({"vqgan__train__seed": 2**32}, "vqgan.train.seed"),
    ({"transformer__train__seed": 2**32}, "transformer.train.seed"),
    ({"sample__seeds": [0, 2**32]}, "sample.seeds.1"),
    ({"fid__seed": 2**32}, "fid.seed"),
    ({"datasets__coco_tiny__seed": 2**32}, "datasets.coco_tiny.seed"),
    ({"datasets__atari_tiny__seed": 2**32}, "datasets.atari_tiny.seed"),
])
def test_a_seed_beyond_32_bits_is_refused(change, key):
    message = rejected(cfg(**change))
    assert f"config key {key}: 4294967296 is greater than the maximum of 4294967295" in message, message


@pytest.mark.parametrize("change,key", [
    ({"vqgan__train__lr": float("nan")}, "vqgan.train.lr"),
    ({"vqgan__loss__rec_weight": float("inf")}, "vqgan.loss.rec_weight"),
    ({"transformer__train__betas": [0.9, float("nan")]}, "transformer.train.betas.1"),
    ({"sample__top_p": float("nan")}, "sample.top_p"),
    ({"datasets__atari_tiny__val_fraction": float("nan")}, "datasets.atari_tiny.val_fraction"),
])
def test_nan_and_infinity_are_refused_in_every_number(change, key):
    message = rejected(cfg(**change))
    assert message.startswith(f"config key {key}: ") and "finite" in message, message


def test_a_non_finite_number_from_yaml_gets_a_hint():
    c = cfg(vqgan__train__lr=yaml.safe_load("lr: .nan")["lr"])
    assert "(.nan and .inf are YAML's NaN and infinity" in rejected(c)


@pytest.mark.parametrize("change,pattern", [
    # a discriminator deeper than the frames (32 px) while the GAN runs (disc_start 10 < steps 20)
    ({"vqgan__loss__disc_layers": 4},
     r"^config key datasets.coco_tiny.vqgan.loss.disc_layers: loss.disc_layers=4 needs .* at least 48 px"),
    ({"variants": {"paper": {"vqgan": {"loss": {"disc_layers": 5}}}}},
     r"^config key variants.paper.vqgan.loss.disc_layers \(for dataset coco_tiny\): .* at least 96 px"),
    # ... or than the crops
    ({"vqgan__train__crop": 16},
     r"^config key datasets.coco_tiny.vqgan.train.crop: vqgan.train.crop=16 is smaller than the discriminator's "
     r"smallest input \(24 px"),
    # crops that do not fit the frames or the token grid
    ({"vqgan__train__crop": 64}, r"^config key datasets.coco_tiny.vqgan.train.crop: vqgan.train.crop=64: must be at "
                                 r"most the data's resolution \(32 px\)"),
    ({"vqgan__train__crop": 25}, r"datasets.coco_tiny.vqgan.train.crop: .*multiple of the model's downsampling"),
    ({"vqgan__train__object_crops": 0.5}, r"^config key datasets.coco_tiny.vqgan.train.object_crops: .*needs crop > 0"),
])
def test_crops_and_the_discriminator_are_checked_before_any_job(change, pattern):
    message = rejected(cfg(**change))
    assert re.search(pattern, message), message


def test_a_deep_discriminator_is_fine_when_the_gan_never_runs():
    c = cfg(vqgan__loss__disc_layers=4, variants={"ours": {}}, vqgan__loss__disc_start=20)
    check_experiment(c, RULES)


def test_the_trainer_and_the_config_check_share_one_crop_rule():
    import vqgan.train.vqgan as trainer
    from vqgan.config import build

    assert trainer.vqgan_training is build.vqgan_training and not hasattr(trainer, "check_crop")


@pytest.mark.parametrize("change,pattern", [
    ({"vqgan__model__attn_resolutions": [64]},
     r"^config key datasets.coco_tiny.vqgan.model.attn_resolutions: \[64\] matches no level of the model "
     r"\(32, 16 px\); write \[\] for no attention"),
    ({"vqgan__train__warmup_steps": 20}, r"^config key datasets.coco_tiny.vqgan.train.warmup_steps: "
                                         r"vqgan.train.warmup_steps = 20 is not below vqgan.train.steps = 20"),
    ({"variants": {"paper": {"transformer": {"train": {"warmup_steps": 50}}}}},
     r"^config key variants.paper.transformer.train.warmup_steps \(for dataset coco_tiny\): "
     r"transformer.train.warmup_steps = 50 is not below transformer.train.steps = 30"),
    ({"vqgan__train__checkpoint_every": 21}, r"^config key datasets.coco_tiny.vqgan.train.checkpoint_every: "
                                             r"vqgan.train.checkpoint_every = 21 is more than vqgan.train.steps = 20"),
    ({"variants": {"paper": {"vqgan": {"train": {"steps": 5}}}}},
     r"^config key variants.paper.vqgan.train.steps \(for dataset coco_tiny\): vqgan.train.checkpoint_every = 10 "
     r"is more than vqgan.train.steps = 5"),
])
def test_settings_that_silently_do_nothing_are_refused(change, pattern):
    message = rejected(cfg(**change))
    assert re.search(pattern, message), message


def test_the_explicit_forms_of_those_settings_pass():
    # [] is "no attention"; warm-up over the whole run is steps - 1; a state at the last step only is steps
    c = cfg(vqgan__model__attn_resolutions=[], vqgan__train__warmup_steps=19, vqgan__train__checkpoint_every=20)
    check_experiment(c, RULES)


def test_a_variants_n_head_not_dividing_n_embd_names_n_head():
    message = rejected(cfg(variants={"paper": {"transformer": {"model": {"n_head": 3}}}}))
    assert message.startswith("config key variants.paper.transformer.model.n_head (for dataset coco_tiny): "), message
    assert "n_embd=32" in message and "n_head=3" in message, message


@pytest.mark.parametrize("target", [
    "vqgan.models.losses.LossConfig", "vqgan.models.vqgan.VQGANConfig", "vqgan.models.gpt.GPTConfig",
    "vqgan.train.config.TransformerTrainConfig", "vqgan.sample.SampleConfig", "vqgan.eval.recon.EvalConfig",
    "vqgan.eval.fid.FIDConfig",
])
def test_the_config_check_builds_each_stages_own_config(monkeypatch, target):
    """The DAG-time check runs the classes' own rules (one copy), so a rule added there is checked before any job."""
    import importlib

    module, name = target.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    original = cls.__init__

    def refuse(self, *a, **k):
        original(self, *a, **k)
        raise ValueError(f"{name} refuses")

    monkeypatch.setattr(cls, "__init__", refuse)
    assert f"{name} refuses" in rejected(cfg())


@pytest.mark.parametrize("files", [
    ["config/config.yaml"], ["config/config.yaml", "config/offline.yaml"], ["config/paper.yaml"],
    [".test/config/config.yaml"],
])
def test_the_shipped_configs_pass(files):
    from conftest import REPO

    config: dict = {}
    for f in files:
        config = deep_merge(config, read_config_file(REPO / f))
    if files[0].startswith(".test"):
        config["coco"]["root"] = str(TINY_COCO)
    check_experiment(config, RULES)


def test_object_crops_need_object_boxes_before_any_job():
    message = rejected(cfg(vqgan__train__crop=24, vqgan__train__object_crops=0.5))
    assert message.startswith("config key datasets.coco_tiny.vqgan.train.object_crops: 0.5 needs object boxes"), message


def test_the_check_before_any_job_imports_no_torch():
    # the workflow runs it on every invocation (a dry run, `--dag`, a rerun of one stage): torch costs seconds there
    code = ("import sys, yaml; from atari_collect.config import DATASET_RULES; "
            "from vqgan.config.experiment import check_experiment; "
            f"cfg = yaml.safe_load(open({str(TEST_CONFIG)!r})); cfg['coco']['root'] = {str(TINY_COCO)!r}; "
            "check_experiment(cfg, {'atari': DATASET_RULES}); "
            "print(sorted(m for m in ('torch', 'cv2', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
