"""The whole experiment checked before any job runs, and the merged config section each job gets.

Every check the config and the file system allow happens here, and each failure is one ConfigError naming the
key: the schemas (types, ranges, unknown keys, defaults filled), the merge of every section from the top level
through the dataset's override to the variant's (each step validated, so an error names the override it came
from), the cross-key rules, the COCO root, the Atari eval sets. What a dataset kind's own package knows (the
collector's game rules) comes in as `rules`, so that vqgan imports nothing of atari_collect.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from vqgan.config.files import ConfigError
from vqgan.config.schema import deep_merge, section_schema, validate

OVERRIDABLE = ("vqgan", "transformer", "sample")  # sections a dataset entry and a variant may override
NOT_FOR_COLLECTION = ("eval_sets",)  # dataset keys of later stages: changing them never recollects
DEFAULT_VARIANT = "default"
DEFAULT_COCO_ROOT = "resources/coco"  # where download_coco puts COCO when coco.root is null


class DatasetRules(Protocol):
    """What a dataset kind's own package checks (atari_collect.config.DATASET_RULES for `atari`)."""

    def check(self, entry: dict[str, Any]) -> Any:
        """Raise a ValueError for a bad entry; with `.key` (relative to the entry), `.value` and `.what` set, the
        message names the key by its full path."""

    def has_object_boxes(self, games: list[str]) -> bool:
        """Whether collecting `games` records object boxes (objects.csv)."""


@dataclass
class Experiment:
    """A checked config: `config` with every default filled, and each dataset's sections per variant."""

    config: dict[str, Any]
    sections: dict[str, dict[str, dict[str, Any]]]  # ds -> variant -> {"vqgan": ..., "transformer": ..., ...}

    @property
    def datasets(self) -> dict[str, dict[str, Any]]:
        return self.config["datasets"]

    @property
    def variants(self) -> list[str]:
        return list(variants(self.config))

    def section(self, ds: str, variant: str, name: str) -> dict[str, Any]:
        return self.sections[ds][variant][name]

    def collection_entry(self, ds: str) -> dict[str, Any]:
        """The dataset entry as its collection command takes it: no per-stage overrides, no eval sets."""
        return collection_entry(self.datasets[ds])

    def section_json(self, ds: str, variant: str, name: str, keys=None) -> str:
        """A merged section as JSON (a job's tracked param: a change reruns it); `keys` limits it to the
        sub-sections a rule reads, so that e.g. an evaluation setting never retrains."""
        data = self.section(ds, variant, name)
        if keys is not None:
            data = {k: data[k] for k in keys}
        return json.dumps(data, sort_keys=True)


def variants(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{name: overrides}; a config without `variants` runs one variant, `default`, with no overrides."""
    return cfg.get("variants") or {DEFAULT_VARIANT: {}}


def collection_entry(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k not in OVERRIDABLE + NOT_FOR_COLLECTION}


# -- naming the key an error is about ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    """One dataset under one variant: names a key where the user set it (the variant's override, else the
    dataset's)."""

    ds: str
    variant: str
    overrides: dict[str, Any]
    entry: dict[str, Any] = field(default_factory=dict)  # the dataset's entry, with its own overrides

    def _set_by_variant(self, *keys: str) -> bool:
        return _has(self.overrides, keys)

    def nearest(self, section: tuple[str, ...], paths: tuple[tuple[str, ...], ...]) -> str:
        """Of the keys a rule involves (paths within `section`; `("resolution",)` is the dataset's), the one the user
        set nearest: the variant's, else the dataset's override, else the first; named as `key` names it."""
        keys = [(*section, *p) for p in paths if p != ("resolution",)]
        chosen = next((k for k in keys if self._set_by_variant(*k)), None) or next(
            (k for k in keys if _has(self.entry, k)), None)
        if chosen is None and paths[0] == ("resolution",):
            return f"datasets.{self.ds}.resolution"
        return self.key(*(chosen or (*section, *paths[0])))

    def where(self, *keys: str) -> str:
        """The key's path where it was set: `variants.paper.vqgan.train.lr` or `datasets.coco64.vqgan.train.lr`."""
        head = f"variants.{self.variant}" if self._set_by_variant(*keys) else f"datasets.{self.ds}"
        return ".".join((head, *keys))

    def context(self, *keys: str) -> str:
        """A variant's override applies to every dataset: say which one failed."""
        return f" (for dataset {self.ds})" if self._set_by_variant(*keys) else ""

    def key(self, *keys: str) -> str:
        """e.g. `variants.paper.vqgan.train.lr (for dataset coco64)` or `datasets.coco64.vqgan.train.lr`."""
        return self.where(*keys) + self.context(*keys)

    def sample_counts(self, both: str | None = None) -> str:
        # sample.n_samples / n_per_class, named where they were set; `both`: name the two keys joined by it
        keys = ("n_per_class", "n_samples")
        by_variant = any(self._set_by_variant("sample", k) for k in keys)
        head = f"variants.{self.variant}.sample" if by_variant else f"datasets.{self.ds}.sample"
        where = f"{head}.{both.join(keys)}" if both else head
        return where + (f" (for dataset {self.ds})" if by_variant else "")


def _has(node: Any, keys: tuple[str, ...]) -> bool:
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


# -- cross-key checks of one dataset under one variant ------------------------------------------------------------


def _split_bounds(entry: dict[str, Any]) -> dict[str, tuple[int, str]]:
    """The most images each split can hold, and why: {split: (count, why)}."""
    if entry["kind"] == "coco":
        return {s: (entry[f"{s}_images"], f"{s}_images") for s in ("train", "val")}
    # every game puts at least one episode into each split
    most = len(entry["games"]) * (entry["frames_per_game"] - 1)
    return {s: (most, "games x (frames_per_game - 1)") for s in ("train", "val")}


def _check_batches(run: _Run, sections: dict[str, Any], n_train: int, why: str) -> None:
    for section in ("vqgan", "transformer"):
        tc = sections[section]["train"]
        bs, ga = tc["batch_size"], tc["grad_accum"]
        if bs % ga:
            raise ConfigError(
                f"config key {run.key(section, 'train', 'grad_accum')}: {ga} does not divide "
                f"{section}.train.batch_size = {bs} (the global batch is split into grad_accum micro-batches)")
        if bs // ga > n_train:
            raise ConfigError(
                f"config key {run.key(section, 'train', 'batch_size')}: a micro-batch of {bs // ga} "
                f"(batch_size {bs} / grad_accum {ga}) is more than the {n_train} images the train split can hold "
                f"({why}); lower the batch size or add data")


def _check_fid_counts(run: _Run, cfg: dict[str, Any], entry: dict[str, Any], sample: dict[str, Any],
                      n_val: int, why: str) -> None:
    fid = cfg["fid"]
    classes = len(entry["games"]) if entry["kind"] == "atari" else 1
    total = sample["n_samples"] or (sample["n_per_class"] or 16) * classes
    if total < fid["min_images"]:
        raise ConfigError(
            f"config key {run.sample_counts()}: {total} samples in all, fewer than fid.min_images = "
            f"{fid['min_images']}, so FID would fail; raise sample.n_samples (or n_per_class)")
    if n_val < fid["min_images"]:
        raise ConfigError(
            f"config key datasets.{run.ds}: the val split holds at most {n_val} images ({why}), fewer than "
            f"fid.min_images = {fid['min_images']}, so FID would fail")


def _check_schedules(run: _Run, sections: dict[str, Any]) -> None:
    """What the loops accept but silently makes nothing of: a warm-up the run never finishes (the learning rate
    never reaches `lr`, the schedule never runs) and resumable states more steps apart than the run is long (a
    state is saved at the last step anyway: `steps` says that explicitly)."""
    for section in ("vqgan", "transformer"):
        tc, where = sections[section]["train"], (section, "train")
        steps, warmup, every = tc["steps"], tc["warmup_steps"], tc["checkpoint_every"]
        if warmup >= steps:
            raise ConfigError(
                f"config key {run.nearest(where, (('warmup_steps',), ('steps',)))}: {section}.train.warmup_steps = "
                f"{warmup} is not below {section}.train.steps = {steps}, so the learning rate never reaches lr and "
                "its schedule never runs; lower it (steps - 1 ramps over the whole run, 0 means no warm-up)")
        if every > steps:
            raise ConfigError(
                f"config key {run.nearest(where, (('checkpoint_every',), ('steps',)))}: {section}.train."
                f"checkpoint_every = {every} is more than {section}.train.steps = {steps}, so no resumable state is "
                f"saved before the last step; write {steps} (a state at the last step only) or less")


def _named_error(run: _Run, section: tuple[str, ...], e: ValueError) -> ConfigError:
    """A stage config's ValueError as a ConfigError naming the key: its `.paths` (within `section`) or `.keys`
    (fields of the section), the one the user set nearest; the section when the rule names no key."""
    paths = getattr(e, "paths", None) or tuple((k,) for k in getattr(e, "keys", ()))
    if not paths:
        return ConfigError(f"config key {run.key(*section)}: {e}")
    what = getattr(e, "what", None) or str(e)
    if section == ("sample",) and set(paths) == {("n_per_class",), ("n_samples",)}:
        return ConfigError(f"config keys {run.sample_counts(' and ')}: {what}")
    return ConfigError(f"config key {run.nearest(section, paths)}: {what}")


@contextlib.contextmanager
def _named(run: _Run, *section: str):
    try:
        yield
    except ConfigError:
        raise
    except ValueError as e:
        raise _named_error(run, section, e) from None


def _check_stage_configs(entry: dict[str, Any], run: _Run, sections: dict[str, Any]) -> None:
    """Each stage's own config objects built from the merged sections, as its job builds them: their rules (one
    copy each, in the models, the loops, the sampler and evaluation) run for every dataset and variant before any
    job. No torch: the config classes live in torch-free modules (vqgan/models/config.py, vqgan/config/sections.py)."""
    from vqgan.config import build
    from vqgan.config.sections import EvalConfig, SampleConfig, TransformerTrainConfig

    vq, tr, sample = sections["vqgan"], sections["transformer"], sections["sample"]
    with _named(run, "vqgan"):
        model, _, _ = build.vqgan_training(vq, entry["resolution"])
    with _named(run, "vqgan", "eval"):
        EvalConfig.from_dict(vq["eval"])
    classes = len(entry["games"]) if entry["kind"] == "atari" else 1
    with _named(run, "transformer", "model"):
        build.gpt_config(model.n_codes, classes, model.grid**2, tr["model"])
    with _named(run, "transformer", "train"):
        TransformerTrainConfig.from_dict(tr["train"])
    with _named(run, "sample"):  # one job per seed: the sampler takes `seed`
        SampleConfig.from_dict({**{k: v for k, v in sample.items() if k != "seeds"}, "seed": sample["seeds"][0]})


def _check_run(cfg: dict[str, Any], entry: dict[str, Any], run: _Run, sections: dict[str, Any],
               rules: dict[str, DatasetRules]) -> None:
    """The cross-key checks of one dataset's merged sections under one variant."""
    _check_stage_configs(entry, run, sections)
    _check_schedules(run, sections)
    vq, sample = sections["vqgan"], sections["sample"]
    boxes = entry["kind"] in rules and rules[entry["kind"]].has_object_boxes(entry["games"])
    for key, value in (("loss", "object_weight"), ("train", "object_crops")):
        if vq[key][value] > 0 and not boxes:
            raise ConfigError(
                f"config key {run.key('vqgan', key, value)}: {vq[key][value]} needs object boxes (objects.csv), "
                "which only Atari games with RAM rules have (docs/objects.md); set it to 0 for this dataset")
    bounds = _split_bounds(entry)
    _check_batches(run, sections, *bounds["train"])
    _check_fid_counts(run, cfg, entry, sample, *bounds["val"])


# -- per dataset ---------------------------------------------------------------------------------------------------


def _check_kind_rules(ds: str, entry: dict[str, Any], rules: dict[str, DatasetRules]) -> None:
    # the dataset kind's own parser holds its rules (Atari: a game twice in any spelling, game_policy naming a game
    # not in games, the crop inside the 210x160 screen, RAM cells, budgets): one copy of them, run here too
    if entry["kind"] not in rules:
        return
    try:
        rules[entry["kind"]].check(copy.deepcopy(collection_entry(entry)))
    except ValueError as e:
        key = getattr(e, "key", None)
        if key is None:
            raise ConfigError(f"config key datasets.{ds}: {e}") from None
        raise ConfigError(f"config key datasets.{ds}.{key} = {e.value!r}: {e.what}") from None


def _check_eval_sets(ds: str, entry: dict[str, Any]) -> None:
    # folders exist, hold 210x160 RGB PNGs, and name one of the dataset's games: before any job, not in eval_vqgan
    from vqgan.eval.eval_sets import EvalSetError, check_eval_sets

    try:
        check_eval_sets(entry.get("eval_sets"), entry["games"], f"datasets.{ds}.eval_sets")
    except EvalSetError as e:
        raise ConfigError(str(e)) from None


def _merge_sections(cfg: dict[str, Any], entry: dict[str, Any], run: _Run) -> dict[str, Any]:
    """Global section -> dataset override -> variant override, each step validated so that an error names the
    override it came from."""
    sections = {}
    for section in OVERRIDABLE:
        merged = deep_merge(cfg[section], entry.get(section, {}))
        validate(merged, section_schema(section), f"datasets.{run.ds}.{section}")
        if section in run.overrides:
            merged = deep_merge(merged, run.overrides[section])
            validate(merged, section_schema(section), run.where(section), run.context(section))
        sections[section] = merged
    return sections


# -- the file system: COCO ----------------------------------------------------------------------------------------


def _check_coco_root(root: str) -> None:
    from vqgan.data.coco import missing_parts

    layout = "annotations/instances_{train,val}2017.json, train2017/ and val2017/"
    if not os.path.isdir(root):
        raise ConfigError(
            f"config key coco.root: {root} is not a folder (a relative path starts at {os.getcwd()}); "
            f"name a COCO root ({layout}), or set coco.root: null to download")
    missing = missing_parts(root)
    if missing:
        raise ConfigError(f"config key coco.root: {root} lacks {', '.join(missing)}; a COCO root holds {layout}. "
                          "Fix the path, or set coco.root: null to download")


def _check_coco_categories(root: str, wanted: dict[str, list[str]]) -> None:
    """Category names against the root's annotations (only their `categories` list is read), or COCO 2017's."""
    import difflib

    from vqgan.data.coco import COCO_2017_CATEGORIES, CocoError, annotation_file, category_names

    ann = annotation_file(root, "train")
    try:
        names = category_names(ann) if ann.is_file() else COCO_2017_CATEGORIES
    except CocoError as e:
        raise ConfigError(f"config key coco.root: {e}") from None
    source = ann if ann.is_file() else "COCO 2017"
    for ds, cats in wanted.items():
        for c in cats:
            if c not in names:
                close = difflib.get_close_matches(c, names, n=3)
                hint = f"did you mean {', '.join(map(repr, close))}?" if close else f"its names: {', '.join(names)}"
                raise ConfigError(f"config key datasets.{ds}.categories: {c!r} is not a category of {source} ({hint})")


def _check_coco(cfg: dict[str, Any]) -> None:
    coco = {ds: e for ds, e in cfg["datasets"].items() if e["kind"] == "coco"}
    if not coco:
        return
    root = cfg["coco"]["root"]
    if root:
        _check_coco_root(root)
    wanted = {ds: e["categories"] for ds, e in coco.items() if e["categories"]}
    if wanted:
        _check_coco_categories(root or DEFAULT_COCO_ROOT, wanted)


# -- the whole experiment ----------------------------------------------------------------------------------------


def _check_top_level(cfg: dict[str, Any]) -> None:
    wd = cfg["weights_dir"]
    if "{" in wd or "}" in wd:
        raise ConfigError(f"config key weights_dir: {wd!r} has braces, which Snakemake would read as wildcards in "
                          "fetch_weights' outputs; use a plain folder path")
    from vqgan.config.sections import FIDConfig

    try:  # the fid job's own rules
        FIDConfig.from_dict(cfg["fid"])
    except ValueError as e:
        raise ConfigError(f"config key fid: {e}") from None
    if cfg["fid"]["min_images"] > cfg["fid"]["n"]:
        raise ConfigError(f"config key fid.min_images: {cfg['fid']['min_images']} is more than fid.n = "
                          f"{cfg['fid']['n']} images per side, so every FID would fail")


def check_experiment(cfg: dict[str, Any], rules: dict[str, DatasetRules]) -> Experiment:
    """Validate `cfg` in place (every default filled) and return it with each dataset's merged sections; a
    ConfigError naming the key otherwise. `rules` maps a dataset kind to its package's own checks (the workflow
    passes atari_collect's for `atari`); a kind without rules gets the schema and cross-key checks only."""
    validate(cfg, section_schema(""), "")
    _check_top_level(cfg)
    sections: dict[str, dict[str, dict[str, Any]]] = {}
    for ds, entry in cfg["datasets"].items():
        validate(entry, section_schema("", f"dataset_{entry['kind']}"), f"datasets.{ds}")
        _check_kind_rules(ds, entry, rules)
        if entry["kind"] == "atari":
            _check_eval_sets(ds, entry)
        sections[ds] = {}
        for variant, overrides in variants(cfg).items():
            run = _Run(ds, variant, overrides, entry)
            sections[ds][variant] = _merge_sections(cfg, entry, run)
            _check_run(cfg, entry, run, sections[ds][variant], rules)
    _check_coco(cfg)
    return Experiment(cfg, sections)

