"""The models' configs built from config sections over the schema's defaults.

The model dataclasses (vqgan/models/) import nothing of the project and so hold no defaults: every value comes
from here, from a section as the workflow passes it (complete) or as a user, a test or a benchmark writes it
(partial: the schema fills the rest). Keyword arguments set dataclass fields by name, after the section.

`vqgan_training` builds the VQGAN stage's configs and checks the rules across them (crops, the discriminator's
smallest input, attention levels): the trainer calls it on its data, the config check (experiment.py) on every
dataset and variant before any job, so there is one copy of each rule. Its ValueErrors carry `.paths`, the keys
involved within the `vqgan` section (`("resolution",)` is the dataset's), the first the one to name.
"""
from __future__ import annotations

from typing import Any

from vqgan.config.schema import deep_merge, defaults
from vqgan.config.sections import VQGANTrainConfig
from vqgan.models.config import GPTConfig, LossConfig, VQGANConfig, disc_min_input


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


def _vqgan_path(field: str) -> tuple[str, ...]:
    # VQGANConfig is flat: its fields come from vqgan.model, vqgan.quantizer (`kind` is `quantizer`) and the data
    if field == "resolution":
        return ("resolution",)
    if field == "quantizer":
        return ("quantizer", "kind")
    return ("model" if field in defaults("vqgan.model") else "quantizer", field)


def _built(make, path):
    """make() with its ValueError's keys (fields) given as `.paths` in the vqgan section."""
    try:
        return make()
    except ValueError as e:
        e.paths = tuple(path(k) for k in getattr(e, "keys", ()))
        raise


def vqgan_training(sections: dict[str, Any], resolution: int) -> tuple[VQGANConfig, LossConfig, VQGANTrainConfig]:
    """The model, loss and train configs of the `vqgan` section (model, quantizer, loss, train) for data of this
    resolution; a ValueError with `.paths` when one is invalid or they do not fit together."""
    model = _built(lambda: vqgan_config(resolution, sections), _vqgan_path)
    loss = _built(lambda: loss_config(sections.get("loss")), lambda k: ("loss", k))
    train = _built(lambda: VQGANTrainConfig.from_dict(sections.get("train")), lambda k: ("train", k))
    problems = _attention_problems(model) + _crop_problems(model, loss, train)
    if problems:
        paths, what = problems[0]
        error = ValueError(what)
        error.paths, error.what = paths, what
        raise error
    return model, loss, train


def _attention_problems(model: VQGANConfig) -> list:
    # attention at sizes no level has adds none at all, silently; [] says "no attention"
    if not model.attn_resolutions or set(model.attn_resolutions) & set(model.levels):
        return []
    return [((("model", "attn_resolutions"),),
             f"{list(model.attn_resolutions)} matches no level of the model ({', '.join(map(str, model.levels))} px); "
             "write [] for no attention")]


def _crop_problems(model: VQGANConfig, loss: LossConfig, train: VQGANTrainConfig) -> list:
    """Crops that do not fit the frames, the token grid or the batch-neighbour foreground weight, and a
    discriminator whose smallest input is more than what it is shown while the GAN runs."""
    res, crop, f = model.resolution, train.crop, model.downsample
    if crop and (crop > res or crop % f):
        return [((("train", "crop"),), f"vqgan.train.crop={crop}: must be at most the data's resolution ({res} px) "
                 f"and a multiple of the model's downsampling factor f = {f} (whole tokens); e.g. "
                 f"{max(f, res // 2 // f * f)}, or 0 for whole frames")]
    smallest = disc_min_input(loss.disc_layers)
    gan = loss.disc_start < train.steps and loss.disc_weight > 0
    if gan and crop and crop < smallest:
        return [((("train", "crop"), ("loss", "disc_layers")),
                 f"vqgan.train.crop={crop} is smaller than the discriminator's smallest input ({smallest} px for "
                 f"loss.disc_layers={loss.disc_layers}), and the GAN starts at loss.disc_start={loss.disc_start} < "
                 f"train.steps={train.steps}; crop >= {smallest}, fewer disc_layers, or no GAN (disc_start >= steps)")]
    if gan and res < smallest:
        return [((("loss", "disc_layers"), ("resolution",)),
                 f"loss.disc_layers={loss.disc_layers} needs frames of at least {smallest} px (the discriminator's "
                 f"smallest input, 3 x 2**disc_layers), but these are {res} px and the GAN starts at "
                 f"loss.disc_start={loss.disc_start} < train.steps={train.steps}; fewer disc_layers, or no GAN "
                 "(disc_start >= steps, or disc_weight: 0)")]
    if crop and loss.foreground_weight > 0:
        return [((("train", "crop"), ("loss", "foreground_weight")),
                 f"vqgan.train.crop={crop} with vqgan.loss.foreground_weight > 0: the foreground mask compares each "
                 "image with the median of its batch neighbours, which crops from different places of the frame do "
                 "not share; set foreground_weight: 0 (use loss.object_weight, from the exact object boxes) or "
                 "crop: 0")]
    return []
