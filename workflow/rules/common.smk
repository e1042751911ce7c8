# Helpers shared by every .smk file in workflow/rules/: the config checks, per-dataset config sections, path
# builders. The Snakefile calls the checks (check_config_files, check_config) while the DAG is built, before any
# job runs; each failure is one line naming the file:line or the config key.
import copy
import functools
import json
import os
from pathlib import Path

# -- config files -------------------------------------------------------------------------------------------
# Snakemake reads config files with PyYAML, which keeps the last of two equal keys without a word (a dataset
# written twice is half lost), and on a syntax error says neither file nor line. We re-read each file strictly.

SCHEMAS = {
    name: workflow.source_path(f"../schemas/{name}.schema.yaml")
    for name in ("config", "dataset_coco", "dataset_atari")
}


class ConfigError(ValueError):
    pass


def _yaml_error(path, e):
    mark = e.problem_mark or e.context_mark
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    what = e.problem or e.context or str(e)
    if e.problem and e.context and e.context_mark:
        what += f" ({e.context} at line {e.context_mark.line + 1})"
    if "'\\t'" in what:
        what += " (YAML indents with spaces, not tabs)"
    if "constructor for the tag" in what:
        what += " (plain YAML only)"
    return ConfigError(f"config file {where}: {what}")


def _json_or_none(path, text):
    # Snakemake takes JSON first; JSON indented with tabs is valid JSON but not YAML
    def pairs(items):
        keys = [k for k, _ in items]
        dup = next((k for k in keys if keys.count(k) > 1), None)
        if dup is not None:
            raise ConfigError(
                f"config file {path}: duplicate key {dup!r}; Snakemake would keep only the last one"
            )
        return dict(items)

    try:
        return json.loads(text, object_pairs_hook=pairs)
    except ValueError:
        return None


def _check_nodes(path, node, keys=()):
    """Duplicate keys (at any depth) and YTE templating, found in the YAML node tree, which has line numbers."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        first = {}
        for key_node, value in node.value:
            name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            line = key_node.start_mark.line + 1
            dotted = ".".join((*keys, name))
            if not keys and name == "__use_yte__":
                raise ConfigError(
                    f"config file {path}:{line}: `__use_yte__` turns on YTE templating, which runs Python code "
                    "written in the file (Snakemake already ran it while loading); this workflow takes plain YAML "
                    "only: remove the key and write the values out"
                )
            if key_node.tag != "tag:yaml.org,2002:merge":
                if name in first:
                    raise ConfigError(
                        f"config file {path}:{line}: duplicate key {dotted} (first at line {first[name]}); "
                        "Snakemake would silently keep only the last one"
                    )
                first[name] = line
            _check_nodes(path, value, (*keys, name))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_nodes(path, item, (*keys, str(i)))


def read_config_file(path):
    """One config file as a dict, or a ConfigError naming file:line: syntax errors (tabs included), an empty file,
    a top level that is not a mapping, duplicate keys, YTE templates, tags beyond plain YAML.
    """
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config file {path}: not UTF-8 text ({e.reason} at byte {e.start})"
        ) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        data = _json_or_none(path, text)
        if not isinstance(data, dict):
            raise _yaml_error(path, e) from None
        return data
    if root is None:
        raise ConfigError(
            f"config file {path}: empty; an experiment needs at least `datasets:` (see config/README.md)"
        )
    if not isinstance(root, yaml.MappingNode):
        kind = "list" if isinstance(root, yaml.SequenceNode) else "single value"
        raise ConfigError(
            f"config file {path}:{root.start_mark.line + 1}: the top level is a {kind}; it must map config keys "
            "(`datasets:`, `vqgan:`, ...) to their values"
        )
    _check_nodes(path, root)
    # constructing the values can still fail: a !!python/... tag, which Snakemake's loader may accept
    try:
        return yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        raise _yaml_error(path, e) from None


def check_config_files(paths):
    """Read every config file strictly; a WorkflowError with file:line for the first problem."""
    for path in paths:
        if os.path.isfile(path):  # a missing file: Snakemake's own message says so
            try:
                read_config_file(path)
            except ConfigError as e:
                raise WorkflowError(str(e)) from None


# -- config values ------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)  # read once, not once per dataset and section
def _schema(name):
    import yaml

    with open(SCHEMAS[name]) as f:
        return yaml.safe_load(f)


def _section_schema(name):
    schema = _schema("config")
    return {"$schema": schema["$schema"], **schema["properties"][name]}


@functools.lru_cache(maxsize=None)
def _validator_class():
    """Draft 2020-12 that fills defaults (as snakemake.utils.validate does) and takes integers strictly: JSON
    Schema counts 20.0 as an integer, which then reaches range() or a tensor shape inside a job.
    """
    import jsonschema
    from jsonschema import validators

    base = jsonschema.Draft202012Validator
    strict = base.TYPE_CHECKER.redefine(
        "integer", lambda _, x: isinstance(x, int) and not isinstance(x, bool)
    )
    properties = base.VALIDATORS["properties"]

    def properties_with_defaults(validator, props, instance, schema):
        if isinstance(instance, dict):
            for key, sub in props.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from properties(validator, props, instance, schema)

    return validators.extend(
        base, {"properties": properties_with_defaults}, type_checker=strict
    )


def _hint(e):
    """What to write instead, for the mistakes YAML makes easy."""
    import difflib

    x, expected = e.instance, e.validator_value
    if (
        e.validator == "type"
        and isinstance(x, float)
        and x.is_integer()
        and "integer" in expected
    ):
        return f" (write {int(x)}, without the decimal point)"
    if e.validator == "type" and isinstance(x, str) and "number" in expected:
        try:
            float(x)
            return f" (YAML reads {x} as text: write it with a decimal point and a signed exponent, e.g. 1.0e-4)"
        except ValueError:
            return ""
    if e.validator == "additionalProperties" and isinstance(x, dict):
        known = list(e.schema.get("properties", {}))
        for key in x:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                return (
                    f" (did you mean {close[0]!r}?)"
                    if close
                    else f"; known keys: {', '.join(known)}"
                )
    return ""


def _validate(data, schema, where, context=""):
    """Validate and fill defaults in place; a ConfigError naming the first bad key by its full path (and `context`,
    e.g. the dataset a variant's override was merged for)."""
    from jsonschema.exceptions import best_match

    error = best_match(_validator_class()(schema).iter_errors(data))
    if error is not None:
        path = ".".join(
            [where, *map(str, error.absolute_path)]
            if where
            else map(str, error.absolute_path)
        )
        raise ConfigError(
            f"config key {path or '(top level)'}{context}: {error.message}{_hint(error)}"
        )


def _deep_merge(base, override):
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


OVERRIDABLE = ("vqgan", "transformer", "sample")
# dataset keys of later stages: changing them never recollects
NOT_FOR_COLLECTION = ("eval_sets",)


def _check_eval_sets(ds, entry):
    # folders exist, hold 210x160 RGB PNGs, and name one of the dataset's games: before any job, not in eval_vqgan
    from vqgan.eval.eval_sets import EvalSetError, check_eval_sets

    try:
        where = f"datasets.{ds}.eval_sets"
        check_eval_sets(entry.get("eval_sets"), entry["games"], where)
    except EvalSetError as e:
        raise ConfigError(str(e)) from None


def _atari_config(entry):
    from atari_collect.config import parse_config

    plain = {
        k: v for k, v in entry.items() if k not in OVERRIDABLE and not k.startswith("_")
    }
    return parse_config(copy.deepcopy(plain))


def _check_atari(ds, entry):
    # atari_collect's own parser holds the game-level rules (a game twice in any spelling, game_policy naming a
    # game not in games, the crop inside the 210x160 screen, RAM cells, budgets): one copy of them, run here too
    from atari_collect.config import ConfigError as AtariConfigError

    try:
        _atari_config(entry)
    except AtariConfigError as e:
        if e.key is None:
            raise ConfigError(f"config key datasets.{ds}: {e}") from None
        raise ConfigError(
            f"config key datasets.{ds}.{e.key} = {e.value!r}: {e.what}"
        ) from None


def _check_object_weight(ds, entry, variant):
    """vqgan.loss.object_weight needs object boxes: only Atari games with RAM rules record objects.csv."""
    weight = entry["_variants"][variant]["vqgan"]["loss"]["object_weight"]
    if weight <= 0:
        return
    from atari_collect.objects import has_object_rules

    if entry["kind"] != "atari" or not any(has_object_rules(g) for g in entry["games"]):
        key = ("vqgan", "loss", "object_weight")
        raise ConfigError(
            f"config key {_where(ds, variant, *key)}{_for(ds, variant, *key)}: {weight} needs object boxes "
            "(objects.csv), which only Atari games with RAM rules have (docs/objects.md); set it to 0 for this "
            "dataset"
        )


def _split_bounds(entry):
    """The most images each split can hold, and why: {split: (count, why)}."""
    if entry["kind"] == "coco":
        return {s: (entry[f"{s}_images"], f"{s}_images") for s in ("train", "val")}
    # every game puts at least one episode into each split
    most = len(entry["games"]) * (entry["frames_per_game"] - 1)
    return {s: (most, "games x (frames_per_game - 1)") for s in ("train", "val")}


def _check_sizes(cfg, ds, entry, variant):
    """Batch and sample counts against what the splits can hold: each of these would fail inside a job."""
    bounds = _split_bounds(entry)
    (n_train, why_train), (n_val, why_val) = bounds["train"], bounds["val"]
    sections = entry["_variants"][variant]
    for section in ("vqgan", "transformer"):
        tc = sections[section]["train"]
        bs, ga = tc["batch_size"], tc["grad_accum"]
        if bs % ga:
            key = (section, "train", "grad_accum")
            raise ConfigError(
                f"config key {_where(ds, variant, *key)}{_for(ds, variant, *key)}: {ga} does not divide "
                f"{section}.train.batch_size = {bs} (the global batch is split into grad_accum micro-batches)"
            )
        if bs // ga > n_train:
            key = (section, "train", "batch_size")
            raise ConfigError(
                f"config key {_where(ds, variant, *key)}{_for(ds, variant, *key)}: a micro-batch of {bs // ga} "
                f"(batch_size {bs} / grad_accum {ga}) "
                f"is more than the {n_train} images the train split can hold ({why_train}); lower the batch size or "
                "add data"
            )
    fid, sample = cfg["fid"], sections["sample"]
    classes = len(entry["games"]) if entry["kind"] == "atari" else 1
    total = sample["n_samples"] or (sample["n_per_class"] or 16) * classes
    if total < fid["min_images"]:
        raise ConfigError(
            f"config key {_sample_counts(ds, variant)}: {total} samples in all, fewer than fid.min_images = "
            f"{fid['min_images']}, so FID would fail; raise sample.n_samples (or n_per_class)"
        )
    if n_val < fid["min_images"]:
        raise ConfigError(
            f"config key datasets.{ds}: the val split holds at most {n_val} images ({why_val}), fewer than "
            f"fid.min_images = {fid['min_images']}, so FID would fail"
        )


def _check_coco(cfg, coco_datasets):
    """The COCO root's layout, and category names against its annotations (or the official 80 names)."""
    import difflib

    from vqgan.data.coco import (
        COCO_2017_CATEGORIES,
        CocoError,
        annotation_file,
        category_names,
        missing_parts,
    )

    root = cfg["coco"]["root"]
    if root:
        layout = "annotations/instances_{train,val}2017.json, train2017/ and val2017/"
        if not os.path.isdir(root):
            raise ConfigError(
                f"config key coco.root: {root} is not a folder (a relative path starts at {os.getcwd()}); "
                f"name a COCO root ({layout}), or set coco.root: null to download"
            )
        missing = missing_parts(root)
        if missing:
            raise ConfigError(
                f"config key coco.root: {root} lacks {', '.join(missing)}; a COCO root holds {layout}. Fix the "
                "path, or set coco.root: null to download"
            )
    wanted = {ds: e["categories"] for ds, e in coco_datasets.items() if e["categories"]}
    if not wanted:
        return
    ann = annotation_file(root or coco_root(), "train")
    try:
        names = category_names(ann) if ann.is_file() else COCO_2017_CATEGORIES
    except CocoError as e:
        raise ConfigError(f"config key coco.root: {e}") from None
    source = ann if ann.is_file() else "COCO 2017"
    for ds, cats in wanted.items():
        for c in cats:
            if c not in names:
                close = difflib.get_close_matches(c, names, n=3)
                hint = (
                    f"did you mean {', '.join(map(repr, close))}?"
                    if close
                    else f"its names: {', '.join(names)}"
                )
                raise ConfigError(
                    f"config key datasets.{ds}.categories: {c!r} is not a category of {source} ({hint})"
                )


DEFAULT_VARIANT = "default"


def variants(cfg):
    """{name: overrides}; a config without `variants` runs one variant, `default`, with no overrides."""
    return cfg.get("variants") or {DEFAULT_VARIANT: {}}


def _from_variant(variant, *keys):
    """Whether the variant's overrides set this key (e.g. "vqgan", "train", "batch_size")."""
    node = variants(config).get(variant, {})
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def _where(ds, variant, *keys):
    """The config key an error names: the variant's override where it sets the key, the dataset's otherwise."""
    head = f"variants.{variant}" if _from_variant(variant, *keys) else f"datasets.{ds}"
    return ".".join((head, *keys))


def _for(ds, variant, *keys):
    return f" (for dataset {ds})" if _from_variant(variant, *keys) else ""


def _sample_counts(ds, variant, both=None):
    # sample.n_samples / n_per_class, named where they were set; `both`: name the two keys joined by it
    keys = ("n_per_class", "n_samples")
    named = any(_from_variant(variant, "sample", k) for k in keys)
    head = f"variants.{variant}.sample" if named else f"datasets.{ds}.sample"
    where = f"{head}.{both.join(keys)}" if both else head
    return where + (f" (for dataset {ds})" if named else "")


def _check_variant(cfg, ds, entry, variant):
    """The cross-key checks of one dataset's merged sections under one variant."""
    sections = entry["_variants"][variant]
    vq = sections["vqgan"]
    f = 2 ** (len(vq["model"]["ch_mult"]) - 1)
    if entry["resolution"] % f:
        raise ConfigError(
            f"config key datasets.{ds}.resolution: {entry['resolution']} is not a multiple of the VQGAN's "
            f"downsampling factor f = 2**(len({_where(ds, variant, 'vqgan', 'model', 'ch_mult')})-1) = {f}"
        )
    gpt = sections["transformer"]["model"]
    if gpt["n_embd"] % gpt["n_head"]:
        key = ("transformer", "model", "n_embd")
        raise ConfigError(
            f"config key {_where(ds, variant, *key)}{_for(ds, variant, *key)}: {gpt['n_embd']} is not divisible by "
            f"transformer.model.n_head = {gpt['n_head']}"
        )
    sample = sections["sample"]
    if sample["n_per_class"] is not None and sample["n_samples"] is not None:
        raise ConfigError(
            f"config keys {_sample_counts(ds, variant, ' and ')}: set one of them, not both"
        )
    _check_object_weight(ds, entry, variant)
    _check_sizes(cfg, ds, entry, variant)


def _check_config(cfg):
    """Every check that the config and the file system allow, before any job runs."""
    _validate(cfg, _schema("config"), "")
    wd = cfg["weights_dir"]
    if "{" in wd or "}" in wd:
        raise ConfigError(
            f"config key weights_dir: {wd!r} has braces, which Snakemake would read as wildcards in "
            "fetch_weights' outputs; use a plain folder path"
        )
    if cfg["fid"]["min_images"] > cfg["fid"]["n"]:
        raise ConfigError(
            f"config key fid.min_images: {cfg['fid']['min_images']} is more than fid.n = {cfg['fid']['n']} "
            "images per side, so every FID would fail"
        )
    for ds, entry in cfg["datasets"].items():
        _validate(entry, _schema(f"dataset_{entry['kind']}"), f"datasets.{ds}")
        if entry["kind"] == "atari":
            _check_atari(ds, entry)
            _check_eval_sets(ds, entry)
        # global section -> dataset override -> variant override, each step validated so that an error names the
        # override it came from
        entry["_variants"] = {}
        for variant, overrides in variants(cfg).items():
            sections = {}
            for section in OVERRIDABLE:
                merged = _deep_merge(cfg[section], entry.get(section, {}))
                _validate(merged, _section_schema(section), f"datasets.{ds}.{section}")
                if section in overrides:
                    merged = _deep_merge(merged, overrides[section])
                    where = _where(ds, variant, section)
                    _validate(
                        merged,
                        _section_schema(section),
                        where,
                        _for(ds, variant, section),
                    )
                sections[section] = merged
            entry["_variants"][variant] = sections
            _check_variant(cfg, ds, entry, variant)
    coco = {ds: e for ds, e in cfg["datasets"].items() if e["kind"] == "coco"}
    if coco:
        _check_coco(cfg, coco)


def check_config(cfg):
    """Validate the config in place (defaults filled, per-dataset sections merged into entry['_<section>']);
    a WorkflowError with one line naming the key otherwise."""
    try:
        _check_config(cfg)
    except ConfigError as e:
        raise WorkflowError(str(e)) from None


def _names(names):
    # a regex matching exactly these dataset names (never the empty string)
    return "|".join(names) if names else "(?!x)x"


def dataset_json(ds):
    """The dataset entry as the JSON a CLI takes (overrides and private keys removed)."""
    entry = {
        k: v
        for k, v in DATASETS[ds].items()
        if not k.startswith("_") and k not in OVERRIDABLE + NOT_FOR_COLLECTION
    }
    return json.dumps(entry, sort_keys=True)


def eval_sets_json(ds):
    """The dataset's external evaluation sets as JSON (a tracked param of eval_vqgan; `{}` for none)."""
    return json.dumps(DATASETS[ds].get("eval_sets") or {}, sort_keys=True)


def eval_set_folders(wildcards):
    return [s["path"] for s in (DATASETS[wildcards.ds].get("eval_sets") or {}).values()]


def section_json(ds, variant, section, keys=None, **replace):
    """A config section with the dataset's and the variant's overrides applied, as JSON (a tracked param: changes
    rerun the rule).

    `keys` limits it to the sub-sections a rule reads, so that e.g. an evaluation setting never retrains;
    `replace` sets keys (the sample rule's one seed in place of the list).
    """
    data = DATASETS[ds]["_variants"][variant][section]
    if keys is not None:
        data = {k: data[k] for k in keys}
    return json.dumps({**data, **replace}, sort_keys=True)


def sample_seeds(ds, variant):
    return DATASETS[ds]["_variants"][variant]["sample"]["seeds"]


def sample_json(wildcards):
    # one seed per job: the CLI takes `seed`, the config lists `seeds`
    data = DATASETS[wildcards.ds]["_variants"][wildcards.variant]["sample"]
    keep = {k: v for k, v in data.items() if k != "seeds"}
    return json.dumps({**keep, "seed": int(wildcards.seed)}, sort_keys=True)


def sample_folders(wildcards):
    """The variant's sample folders, one per seed (the fid job scores each and reports mean and std)."""
    return [
        f"results/samples/{wildcards.ds}/{wildcards.variant}/seed{s}"
        for s in sample_seeds(wildcards.ds, wildcards.variant)
    ]


def runs():
    """Every (dataset, variant) pair: the unit each stage after the data runs for."""
    return [(ds, v) for ds in DATASETS for v in VARIANTS]


def per_run(pattern):
    """`pattern` with {ds} and {variant} filled for every run."""
    return [pattern.format(ds=ds, variant=v) for ds, v in runs()]


# -- COCO source --------------------------------------------------------------------------------------------


def coco_root():
    return config["coco"]["root"] or "resources/coco"


def coco_source(wildcards):
    # a local COCO root is used as it is; otherwise download_coco provides one
    if config["coco"]["root"]:
        return {}
    return {"download": rules.download_coco.output.summary}


def lpips_weights_when(needed):
    """An input function: the LPIPS weights (the fetch_weights rule's outputs) for the jobs whose variant's `vqgan`
    section needs them, nothing for the others."""

    def inputs(wildcards):
        vq = DATASETS[wildcards.ds]["_variants"][wildcards.variant]["vqgan"]
        return list(rules.fetch_weights.output) if needed(vq) else []

    return inputs


# training needs them only when the perceptual loss is on
perceptual_weights = lpips_weights_when(lambda vq: vq["loss"]["perceptual_weight"] > 0)
# evaluation whenever it scores LPIPS: an input, not a lookup at run time, or a row's LPIPS would depend on whether
# another job had fetched the weights first
eval_lpips_weights = lpips_weights_when(lambda vq: vq["eval"]["lpips"])


# -- targets ------------------------------------------------------------------------------------------------


def explored_datasets():
    """Atari datasets where some game is collected by Go-Explore: the collector draws their coverage.png."""

    def explores(cfg):
        return any(
            cfg.policy_for(label).name == "go_explore"
            for label in range(len(cfg.games))
        )

    return [ds for ds in ATARI_DATASETS if explores(_atari_config(DATASETS[ds]))]


def all_targets():
    """The table, and the figures the HTML report shows."""
    return [
        "results/fid_table.csv",
        "results/plots/benchmarks.png",
        *expand("results/plots/data_{ds}.png", ds=DATASETS),
        *expand("results/plots/coverage_{ds}.png", ds=explored_datasets()),
        *per_run("results/plots/vqgan_{ds}_{variant}_curves.png"),
        *per_run("results/plots/transformer_{ds}_{variant}_curves.png"),
        *per_run("results/vqgan/{ds}/{variant}/recon.png"),
    ]


# -- jobs ---------------------------------------------------------------------------------------------------

# The software environment of every rule (`--use-conda`); the README's virtual environment works as well.
ENV = "../envs/pipeline.yaml"


def gpu_or_cpu(command):
    """`gpu=0` means the CPU: a job that asked for no GPU must not see one, or CPU jobs running side by side would
    all land on cuda:0 of the machine. Rules whose program may use a GPU wrap their shell command in this.
    """
    return (
        "if [ {resources.gpu} -eq 0 ]; then export CUDA_VISIBLE_DEVICES=; fi; "
        + command
    )
