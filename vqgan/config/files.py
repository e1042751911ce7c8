"""Config files read strictly.

Snakemake reads config files with PyYAML, which keeps the last of two equal keys without a word (a dataset
written twice is half lost), and on a syntax error says neither file nor line. We re-read each file strictly.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad config: one line naming the key (or file:line), the value and what to do."""


def _yaml_error(path, e: yaml.MarkedYAMLError) -> ConfigError:
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


def _json_or_none(path, text: str):
    # Snakemake takes JSON first; JSON indented with tabs is valid JSON but not YAML
    def pairs(items):
        keys = [k for k, _ in items]
        dup = next((k for k in keys if keys.count(k) > 1), None)
        if dup is not None:
            raise ConfigError(f"config file {path}: duplicate key {dup!r}; Snakemake would keep only the last one")
        return dict(items)

    try:
        return json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError:  # not JSON either; a duplicate key (ConfigError) goes up
        return None


def _check_nodes(path, node, keys: tuple[str, ...] = ()) -> None:
    """Duplicate keys (at any depth) and YTE templating, found in the YAML node tree, which has line numbers."""
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value in node.value:
            name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            line = key_node.start_mark.line + 1
            if not keys and name == "__use_yte__":
                raise ConfigError(
                    f"config file {path}:{line}: `__use_yte__` turns on YTE templating, which runs Python code "
                    "written in the file (Snakemake already ran it while loading); this workflow takes plain YAML "
                    "only: remove the key and write the values out")
            if key_node.tag != "tag:yaml.org,2002:merge":
                if name in first:
                    raise ConfigError(
                        f"config file {path}:{line}: duplicate key {'.'.join((*keys, name))} (first at line "
                        f"{first[name]}); Snakemake would silently keep only the last one")
                first[name] = line
            _check_nodes(path, value, (*keys, name))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_nodes(path, item, (*keys, str(i)))


def read_config_file(path) -> dict[str, Any]:
    """One config file as a dict, or a ConfigError naming file:line: syntax errors (tabs included), an empty file,
    a top level that is not a mapping, duplicate keys, YTE templates, tags beyond plain YAML.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        data = _json_or_none(path, text)
        if not isinstance(data, dict):
            raise _yaml_error(path, e) from None
        return data
    if root is None:
        raise ConfigError(f"config file {path}: empty; an experiment needs at least `datasets:` (see config/README.md)")
    if not isinstance(root, yaml.MappingNode):
        kind = "list" if isinstance(root, yaml.SequenceNode) else "single value"
        raise ConfigError(
            f"config file {path}:{root.start_mark.line + 1}: the top level is a {kind}; it must map config keys "
            "(`datasets:`, `vqgan:`, ...) to their values")
    _check_nodes(path, root)
    # constructing the values can still fail: a !!python/... tag, which Snakemake's loader may accept
    try:
        return yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        raise _yaml_error(path, e) from None


def check_config_files(paths) -> None:
    """Read every existing file strictly (a missing one gets Snakemake's own message); ConfigError on the first
    problem."""
    for path in paths:
        if Path(path).is_file():
            read_config_file(path)


def _as_typed(path) -> str:
    # Snakemake hands the files over as absolute paths; show those under the working directory as typed
    p = Path(path)
    return str(p.relative_to(Path.cwd())) if p.is_absolute() and p.is_relative_to(Path.cwd()) else str(path)


def check_not_overlays_alone(paths, cfg: dict[str, Any], experiment: str = "config/config.yaml") -> None:
    """Files given to --configfile without any `datasets:` (an overlay such as config/offline.yaml given alone):
    a ConfigError saying to put an experiment first, instead of the schema's "'datasets' is a required property"."""
    if "datasets" in cfg or not paths:
        return
    given = " ".join(_as_typed(p) for p in paths)
    raise ConfigError(
        f"--configfile {given}: no `datasets:`, so no experiment; an overlay such as config/offline.yaml changes "
        f"an experiment and goes after it: --configfile {experiment} {given} (an experiment of your own needs "
        "`datasets:`, see config/README.md)")
