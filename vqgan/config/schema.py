"""The config schemas (`schemas/*.schema.yaml`): the one source of every default, range and description.

Validation fills defaults in place (as snakemake.utils.validate does) and names the first bad key by its full
path with a hint for the mistakes YAML makes easy. `defaults("vqgan.train")` gives a section's defaults to the
commands, which are also run by hand with a partial `--config`.
"""
from __future__ import annotations

import copy
import difflib
import functools
import math
from pathlib import Path
from typing import Any

import yaml

from vqgan.config.files import ConfigError

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
SCHEMAS = ("config", "dataset_coco", "dataset_atari")


@functools.lru_cache(maxsize=None)
def _load(name: str) -> dict[str, Any]:
    if name not in SCHEMAS:
        raise KeyError(f"no schema {name!r}; known: {SCHEMAS}")
    return yaml.safe_load((SCHEMA_DIR / f"{name}.schema.yaml").read_text())


def node(path: str = "", name: str = "config") -> dict[str, Any]:
    """The schema of a dotted section path, e.g. node("vqgan.train")."""
    out = _load(name)
    for key in filter(None, path.split(".")):
        out = out["properties"][key]
    return out


def section_schema(path: str, name: str = "config") -> dict[str, Any]:
    """A section's schema as a schema of its own (validates the section alone)."""
    return {"$schema": _load(name)["$schema"], **node(path, name)}


@functools.lru_cache(maxsize=None)
def _validator_class():
    """Draft 2020-12 that fills defaults and takes integers strictly: JSON Schema counts 20.0 as an integer, which
    then reaches range() or a tensor shape inside a job. Numbers are finite: NaN passes every `minimum` (each
    comparison is false) and infinity every `minimum`, and either would reach a loss or a learning rate."""
    import jsonschema
    from jsonschema import validators

    base = jsonschema.Draft202012Validator
    strict = base.TYPE_CHECKER.redefine_many({
        "integer": lambda _, x: isinstance(x, int) and not isinstance(x, bool),
        "number": lambda _, x: isinstance(x, (int, float)) and not isinstance(x, bool)
        and (isinstance(x, int) or math.isfinite(x)),
    })
    properties = base.VALIDATORS["properties"]

    def properties_with_defaults(validator, props, instance, schema):
        if isinstance(instance, dict):
            for key, sub in props.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from properties(validator, props, instance, schema)

    return validators.extend(base, {"properties": properties_with_defaults}, type_checker=strict)


def _hint(e) -> str:
    """What to write instead, for the mistakes YAML makes easy."""
    x, expected = e.instance, e.validator_value
    if e.validator == "type" and isinstance(x, float) and not math.isfinite(x):
        return " (.nan and .inf are YAML's NaN and infinity: every number must be finite)"
    if e.validator == "type" and isinstance(x, float) and x.is_integer() and "integer" in expected:
        return f" (write {int(x)}, without the decimal point)"
    if e.validator == "type" and isinstance(x, str) and "number" in expected:
        try:
            float(x)
            return f" (YAML reads {x} as text: write it with a decimal point and a signed exponent, e.g. 1.0e-4)"
        except ValueError:
            return ""
    if (x == "no" or x is False) and "fp32" in e.schema.get("enum", ()):  # Accelerate's word; YAML reads no as false
        return " (write fp32 for full precision)"
    if e.validator == "additionalProperties" and isinstance(x, dict):
        known = list(e.schema.get("properties", {}))
        for key in x:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                return f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(known)}"
    return ""


def validate(data: Any, schema: dict[str, Any], where: str = "", context: str = "") -> None:
    """Validate and fill defaults in place; a ConfigError naming the first bad key by its full path (`where` is
    the path of `data` itself; `context` is appended, e.g. the dataset a variant's override was merged for)."""
    from jsonschema.exceptions import best_match

    error = best_match(_validator_class()(schema).iter_errors(data))
    if error is not None:
        path = ".".join([where, *map(str, error.absolute_path)] if where else map(str, error.absolute_path))
        raise ConfigError(f"config key {path or '(top level)'}{context}: {error.message}{_hint(error)}")


def _defaults_of(node_: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, sub in node_.get("properties", {}).items():
        if "default" in sub:
            value = copy.deepcopy(sub["default"])
            out[key] = {**_defaults_of(sub), **value} if isinstance(value, dict) else value
    return out


def defaults(path: str, name: str = "config") -> dict[str, Any]:
    """Every default of a section, nested sections filled too; keys without a default (required ones, and
    switches whose absence means off) are left out."""
    return _defaults_of(node(path, name))


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` merged into a copy of `base`, mappings key by key (how a dataset's and a variant's overrides
    apply to a section)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
