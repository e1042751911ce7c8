"""The models' configs built from config sections over the schema's defaults.

The model dataclasses (vqgan/models/) import nothing of the project and so hold no defaults: every value comes
from here, from a section as the workflow passes it (complete) or as a user, a test or a benchmark writes it
(partial: the schema fills the rest). Keyword arguments set dataclass fields by name, after the section.
"""
from __future__ import annotations

from typing import Any

from vqgan.config.experiment import deep_merge
from vqgan.config.schema import defaults
from vqgan.models.gpt import GPTConfig
from vqgan.models.losses import LossConfig
from vqgan.models.vqgan import VQGANConfig


def vqgan_config(resolution: int, section: dict[str, Any] | None = None, **fields: Any) -> VQGANConfig:
    """`section`: {"model": {...}, "quantizer": {...}} (the `vqgan` section; other keys are ignored)."""
    base = defaults("vqgan")
    given = {k: v for k, v in (section or {}).items() if k in ("model", "quantizer")}
    merged = deep_merge({"model": base["model"], "quantizer": base["quantizer"]}, given)
    # the dataclass is flat: the quantizer's `kind` is its field `quantizer`
    quantizer = {("quantizer" if k == "kind" else k): v for k, v in merged["quantizer"].items()}
    return VQGANConfig.from_dict({**merged["model"], **quantizer, "resolution": resolution, **fields})


def loss_config(section: dict[str, Any] | None = None, **fields: Any) -> LossConfig:
    """`section`: the `vqgan.loss` section."""
    return LossConfig.from_dict({**defaults("vqgan.loss"), **(section or {}), **fields})


def gpt_config(vocab_size: int, n_classes: int, block_size: int, section: dict[str, Any] | None = None,
               **fields: Any) -> GPTConfig:
    """`section`: the `transformer.model` section; the sizes come from the codes."""
    return GPTConfig.from_dict({**defaults("transformer.model"), **(section or {}), "vocab_size": vocab_size,
                                "n_classes": n_classes, "block_size": block_size, **fields})
