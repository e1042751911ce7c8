"""Exported models on disk: `model.safetensors` + `config.json` in one folder (the outputs of train_vqgan and
train_transformer). safetensors holds tensors only, so loading a model can never run code; the JSON config
round-trips the model's dataclass. Weights are renamed into place first and the config last, so a folder whose
config is present has complete weights.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vqgan.io.files import atomic_file, write_json_atomic
from vqgan.models.gpt import GPT, GPTConfig
from vqgan.models.vqgan import VQGAN, VQGANConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def model_files(directory: str | os.PathLike) -> list[Path]:
    """The files a model folder is read from (what no command may overwrite: vqgan.io.files.refuse_overlap)."""
    return [Path(directory) / WEIGHTS, Path(directory) / CONFIG]


class CheckpointError(ValueError):
    """A model folder that cannot be loaded; the message names the file and what to do."""


def save_model(model: torch.nn.Module, directory: str | os.PathLike) -> Path:
    """Write `model` (a VQGAN or GPT: anything with `.cfg`/`.config` having `to_dict()`) into `directory`."""
    directory = Path(directory)
    cfg = getattr(model, "cfg", None) or model.config
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_file(directory / WEIGHTS, lambda p: save_file(state, str(p)))
    write_json_atomic(directory / CONFIG, cfg.to_dict())
    return directory


def load_model(model_cls, config_cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu",
               made_by: str = "the training stage"):
    """`model_cls(config_cls.from_dict(config.json))` with the weights of `directory`, on `map_location`."""
    directory = Path(directory)
    for name in (CONFIG, WEIGHTS):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory / name} is missing: expected a model folder written by {made_by}; "
                                  "rerun that stage")
    try:
        cfg = config_cls.from_dict(json.loads((directory / CONFIG).read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{directory / CONFIG}: not a {model_cls.__name__} config ({e}); rerun {made_by}")
    model = model_cls(cfg)
    try:
        state = load_file(str(directory / WEIGHTS), device=str(map_location))
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{directory / WEIGHTS}: cannot load the weights ({first}); the file is corrupt or "
                              f"belongs to another config: rerun {made_by}")
    return model.to(map_location)


def load_vqgan(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> VQGAN:
    return load_model(VQGAN, VQGANConfig, directory, map_location, made_by="train_vqgan")


def load_gpt(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> GPT:
    return load_model(GPT, GPTConfig, directory, map_location, made_by="train_transformer")
