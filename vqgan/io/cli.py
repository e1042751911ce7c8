"""What every command-line entry point shares: reading its config section.

Rules pass their own config section as a JSON string (`--config '{...}'`, tracked by Snakemake as a param);
a user running a stage by hand can pass a path to a JSON or YAML file instead.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def load_config_arg(value: str) -> dict[str, Any]:
    """Parse `--config`: inline JSON (starts with '{') or a path to a .json/.yaml file."""
    text = value.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise SystemExit(f"--config: not valid JSON ({e}); pass a JSON object or a path to a YAML/JSON file")
    path = Path(value)
    if not path.is_file():
        raise SystemExit(f"--config: {value!r} is neither inline JSON nor an existing file")
    data = yaml.safe_load(path.read_text())  # JSON is YAML too
    if not isinstance(data, dict):
        raise SystemExit(f"--config: {path} must hold a mapping, got {type(data).__name__}")
    return data
