# Helpers shared by the rule files: config checks that a JSON schema cannot express, per-dataset config
# sections, and path builders. Everything here runs when the DAG is built, before any job.
import copy
import functools
import json

from snakemake.utils import validate

# -- config -------------------------------------------------------------------------------------------------

CONFIG_SCHEMA = workflow.source_path("../schemas/config.schema.yaml")


class ConfigError(ValueError):
    pass


def _deep_merge(base, override):
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@functools.lru_cache(maxsize=None)  # read once, not once per dataset and section
def _section_schema(name):
    import yaml

    with open(CONFIG_SCHEMA) as f:
        schema = yaml.safe_load(f)
    return {"$schema": schema["$schema"], **schema["properties"][name]}


def _validate_section(data, name, where):
    import jsonschema

    try:
        jsonschema.Draft202012Validator(_section_schema(name)).validate(data)
    except jsonschema.ValidationError as e:
        path = ".".join([where] + [str(p) for p in e.absolute_path])
        raise ConfigError(f"config key {path}: {e.message}") from None


def _check_atari_games(ds, games):
    from atari_collect.games import resolve_game

    for game in games:
        try:
            resolve_game(game)
        except ValueError as e:
            raise ConfigError(f"config key datasets.{ds}.games: {e}") from None


OVERRIDABLE = ("vqgan", "transformer", "sample")


def _check_config(cfg):
    """Validate dataset entries per kind, apply per-dataset overrides, and check cross-key constraints."""
    for ds, entry in cfg["datasets"].items():
        validate(entry, f"../schemas/dataset_{entry['kind']}.schema.yaml")
        for section in OVERRIDABLE:
            merged = _deep_merge(cfg[section], entry.get(section, {}))
            _validate_section(merged, section, f"datasets.{ds}.{section}")
            entry[f"_{section}"] = merged
        vq = entry["_vqgan"]
        f = 2 ** (len(vq["model"]["ch_mult"]) - 1)
        if entry["resolution"] % f:
            raise ConfigError(
                f"config key datasets.{ds}.resolution: {entry['resolution']} is not a multiple of the VQGAN's "
                f"downsampling factor f = 2**(len(vqgan.model.ch_mult)-1) = {f}"
            )
        if entry["kind"] == "atari":
            _check_atari_games(ds, entry["games"])
        gpt = entry["_transformer"]["model"]
        if gpt["n_embd"] % gpt["n_head"]:
            raise ConfigError(
                f"config key datasets.{ds}.transformer.model.n_embd: {gpt['n_embd']} is not divisible by "
                f"transformer.model.n_head = {gpt['n_head']}"
            )
        sample = entry["_sample"]
        if sample["n_per_class"] is not None and sample["n_samples"] is not None:
            raise ConfigError(
                f"config keys datasets.{ds}.sample.n_per_class and n_samples: set one of them, not both"
            )


try:
    _check_config(config)
except ConfigError as e:
    raise WorkflowError(str(e)) from None


DATASETS = config["datasets"]
COCO_DATASETS = [ds for ds, e in DATASETS.items() if e["kind"] == "coco"]
ATARI_DATASETS = [ds for ds, e in DATASETS.items() if e["kind"] == "atari"]


def _names(names):
    # a regex matching exactly these dataset names (never the empty string)
    return "|".join(names) if names else "(?!x)x"


def dataset_json(ds):
    """The dataset entry as the JSON a CLI takes (overrides and private keys removed)."""
    entry = {
        k: v
        for k, v in DATASETS[ds].items()
        if not k.startswith("_") and k not in OVERRIDABLE
    }
    return json.dumps(entry, sort_keys=True)


def section_json(ds, section, keys=None):
    """A config section with the dataset's overrides applied, as JSON (a tracked param: changes rerun the rule).

    `keys` limits it to the sub-sections a rule reads, so that e.g. an evaluation setting never retrains.
    """
    data = DATASETS[ds][f"_{section}"]
    if keys is not None:
        data = {k: data[k] for k in keys}
    return json.dumps(data, sort_keys=True)


# -- COCO source --------------------------------------------------------------------------------------------


def coco_root():
    return config["coco"]["root"] or "resources/coco"


def coco_source(wildcards):
    # a local COCO root is used as it is; otherwise download_coco provides one
    if config["coco"]["root"]:
        return {}
    return {"download": rules.download_coco.output.summary}


def perceptual_weights(wildcards):
    # LPIPS needs its weights only when the perceptual loss is on
    if DATASETS[wildcards.ds]["_vqgan"]["loss"]["perceptual_weight"] > 0:
        return list(rules.fetch_weights.output)
    return []


# -- targets ------------------------------------------------------------------------------------------------


def all_targets():
    """The table, and the figures the HTML report shows."""
    return [
        "results/fid_table.csv",
        "results/plots/benchmarks.png",
        *expand("results/plots/data_{ds}.png", ds=DATASETS),
        *expand(
            "results/plots/{stage}_{ds}_curves.png",
            stage=["vqgan", "transformer"],
            ds=DATASETS,
        ),
        *expand("results/vqgan/{ds}/recon.png", ds=DATASETS),
        *expand("results/samples/{ds}", ds=DATASETS),
    ]
