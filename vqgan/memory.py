"""Peak GPU memory of the training jobs, from the config alone: no torch, cheap enough to run while the DAG is built.

peak per GPU = trained parameters x (fp32 weight + grad + 2 Adam moments, + DDP's gradient buckets on > 1 process)
             + frozen parameters (LPIPS) + bf16 weight copies (autocast)
             + saved activations of one micro-batch (per-GPU batch = batch_size / GPUs / grad_accum)
             + margin: WORKSPACE_GIB (CUDA context, cuDNN/cuBLAS workspaces) + ACT_MARGIN of the activations
               (allocator fragmentation, backward's transient gradients)

The saved activations are a formula over the layers, whose bytes per element come from vqgan/measure.py (fake
tensors, CUDA's autocast policy: bf16 convolutions and matmuls, fp32 GroupNorm/LayerNorm/softmax); the paper's
VQGAN saves ~1.43 GiB per 256 px image. tests/test_plan.py checks the formula against that measurement (within a few
percent) and the parameter counts against the models (exactly). bench/plan.py prints the plan of every job.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

GIB = 2**30
WORKSPACE_GIB = 2.0
ACT_MARGIN = 0.10
USABLE = 0.95  # of a card's memory: an 80 GB card plans for 76 GiB
LPIPS_PARAMS = 14_716_160  # VGG16 trunk up to relu5_3 + the five linear heads
# saved bytes per element (per pixel of a feature map, per image), measured by vqgan/measure.py under bf16 autocast:
# a ResnetBlock keeps fp32 GroupNorm inputs (4), SiLU inputs (4) and bf16 conv inputs (2) of both halves
RES_BYTES, SHORTCUT_BYTES, ATTN_BYTES, ATTN_MATRIX_BYTES = 10, 2, 24, 4
LPIPS_BYTES, DISC_BYTES, GRID_BYTES = 2439, 116, 11  # per pixel of the image (LPIPS, PatchGAN), per code x z_channels
GPT_LAYER_BYTES, GPT_VOCAB_BYTES, GPT_EMBD_BYTES = 36.4, 4.0, 6.5  # per token: x n_layer*n_embd, x vocab, x n_embd
FP32_VQGAN, FP32_GPT = 1.2, 1.8  # saved bytes in fp32 (precision: fp32) over bf16's, measured the same way


def _conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def vqgan_layers(res: int, m: dict[str, Any]):
    """(kind, c_in, c_out, side) of every block of the encoder and decoder (vqgan/models/vqgan.py's order)."""
    ch, mult, nrb, attn = m["ch"], list(m["ch_mult"]), m["num_res_blocks"], set(m["attn_resolutions"])
    side, cin = res, ch
    for level, mu in enumerate(mult):
        for _ in range(nrb):
            yield "res", cin, ch * mu, side
            cin = ch * mu
            if side in attn:
                yield "attn", cin, cin, side
        if level != len(mult) - 1:
            yield "down", cin, cin, side
            side //= 2
    for _ in range(2):  # the encoder's and the decoder's middle
        yield from (("res", cin, cin, side), ("attn", cin, cin, side), ("res", cin, cin, side))
    for level in reversed(range(len(mult))):
        for _ in range(nrb + 1):
            yield "res", cin, ch * mult[level], side
            cin = ch * mult[level]
            if side in attn:
                yield "attn", cin, cin, side
        if level != 0:
            yield "up", cin, cin, side  # side: its input's
            side *= 2


def vqgan_params(res: int, section: dict[str, Any]) -> int:
    """Parameters of vqgan.models.vqgan.VQGAN for the `vqgan` section's model and quantizer."""
    m, q = section["model"], section["quantizer"]
    ch0, cl, z, cd = m["ch"] * m["ch_mult"][0], m["ch"] * m["ch_mult"][-1], m["z_channels"], q["code_dim"]
    n = _conv(3, m["ch"], 3) + 2 * cl + _conv(cl, z, 3) + _conv(z, cd, 1) + q["n_codes"] * cd + _conv(cd, z, 1)
    n += _conv(z, cl, 3) + 2 * ch0 + _conv(ch0, 3, 3)
    for kind, ci, co, _ in vqgan_layers(res, m):
        if kind == "res":
            n += 2 * ci + _conv(ci, co, 3) + 2 * co + _conv(co, co, 3) + (_conv(ci, co, 1) if ci != co else 0)
        elif kind == "attn":
            n += 2 * ci + _conv(ci, 3 * ci, 1) + _conv(ci, ci, 1)
        else:
            n += _conv(ci, ci, 3)
    return n


def disc_params(loss: dict[str, Any]) -> int:
    """Parameters of the PatchGAN (vqgan.models.losses.NLayerDiscriminator)."""
    ch, mult, n = loss["disc_ch"], 1, _conv(3, loss["disc_ch"], 4)
    for i in range(1, loss["disc_layers"] + 1):
        prev, mult = mult, min(2**i, 8)
        n += _conv(ch * prev, ch * mult, 4, bias=False) + 2 * ch * mult
    return n + _conv(ch * mult, 1, 4)


def vqgan_saved(res: int, section: dict[str, Any], disc: bool) -> float:
    """Bytes autograd keeps per image in the generator's step (G, LPIPS, D on the reconstruction), bf16 autocast."""
    m = section["model"]
    t = 0.0
    for kind, ci, co, s in vqgan_layers(res, m):
        if kind == "res":
            t += (RES_BYTES * (ci + co) + SHORTCUT_BYTES * ci * (ci != co)) * s * s
        elif kind == "attn":
            t += ATTN_BYTES * ci * s * s + ATTN_MATRIX_BYTES * (s * s) ** 2
        elif kind == "down":
            t += 2 * ci * (s + 1) ** 2
        else:
            t += 2 * ci * (s + 2) ** 2
    grid = res // 2 ** (len(m["ch_mult"]) - 1)
    t += RES_BYTES * m["ch"] * m["ch_mult"][0] * res * res + RES_BYTES * m["ch"] * m["ch_mult"][-1] * grid * grid
    t += GRID_BYTES * m["z_channels"] * grid * grid
    t += (LPIPS_BYTES * (section["loss"]["perceptual_weight"] > 0) + DISC_BYTES * disc) * res * res
    return t


def gpt_params(n_layer: int, n_embd: int, vocab: int, block: int, n_classes: int = 0, bias: bool = True) -> int:
    """Parameters of vqgan.models.gpt.GPT (tied head; codes + classes + the unconditional token embedded)."""
    per_layer = 12 * n_embd * n_embd + (13 * n_embd if bias else 4 * n_embd)
    return n_layer * per_layer + (vocab + n_classes + 1 + block) * n_embd + (2 if bias else 1) * n_embd


def gpt_saved(n_layer: int, n_embd: int, vocab: int, block: int) -> float:
    """Bytes autograd keeps per sequence of `block` tokens, bf16 autocast."""
    return block * (GPT_LAYER_BYTES * n_layer * n_embd + GPT_VOCAB_BYTES * vocab + GPT_EMBD_BYTES * n_embd)


@dataclass
class Peak:
    """A training job's memory per GPU, in bytes, and the micro-batch it holds."""

    static: float
    activations: float
    micro_batch: int

    @property
    def total(self) -> float:
        return self.static + self.activations * (1 + ACT_MARGIN) + WORKSPACE_GIB * GIB


def half(precision: str) -> bool:
    """Whether a training step runs in 16 bits: `auto` is bf16 on every GPU the plan is for (compute capability 8+)."""
    return precision not in ("no", "fp32")


def micro_batch(train: dict[str, Any], gpus: int) -> int:
    return max(1, math.ceil(train["batch_size"] / max(1, gpus) / train["grad_accum"]))


def _static(trained: int, frozen: int, gpus: int, precision: str) -> float:
    # fp32 weight, grad and two Adam moments; DDP's gradient buckets beside the grads on > 1 process
    return trained * (16 + 4 * (gpus > 1) + 2 * half(precision)) + 4 * frozen


def vqgan_peak(section: dict[str, Any], resolution: int, gpus: int) -> Peak:
    """Per-GPU peak of train_vqgan: the `vqgan` section (filled), the dataset's resolution, the job's GPUs."""
    train, loss = section["train"], section["loss"]
    res = train.get("crop") or resolution
    disc = loss["disc_weight"] > 0 and loss["disc_start"] < train["steps"]
    trained = vqgan_params(res, section) + disc_params(loss)
    frozen = LPIPS_PARAMS * (loss["perceptual_weight"] > 0)
    b = micro_batch(train, gpus)
    per = vqgan_saved(res, section, disc) * (1.0 if half(train["precision"]) else FP32_VQGAN)
    return Peak(_static(trained, frozen, gpus, train["precision"]), b * per, b)


def gpt_peak(section: dict[str, Any], vocab: int, block: int, gpus: int, n_classes: int = 0) -> Peak:
    """Per-GPU peak of train_transformer: the `transformer` section, the codes' vocabulary and grid size."""
    m, train = section["model"], section["train"]
    trained = gpt_params(m["n_layer"], m["n_embd"], vocab, block, n_classes, m.get("bias", True))
    b = micro_batch(train, gpus)
    per = gpt_saved(m["n_layer"], m["n_embd"], vocab, block) * (1.0 if half(train["precision"]) else FP32_GPT)
    return Peak(_static(trained, 0, gpus, train["precision"]), b * per, b)


def fits(peak: Peak, gpu_mem_gib: float) -> bool:
    return peak.total <= USABLE * gpu_mem_gib * GIB


def training_peaks(exp, gpus: dict[str, int]):
    """(rule, dataset, variant, Peak) of every training job of a checked Experiment; `gpus`: each rule's GPUs."""
    for ds, entry in exp.datasets.items():
        for variant in exp.variants:
            vq = exp.section(ds, variant, "vqgan")
            yield "train_vqgan", ds, variant, vqgan_peak(vq, entry["resolution"], gpus["train_vqgan"])
            grid = entry["resolution"] // 2 ** (len(vq["model"]["ch_mult"]) - 1)
            tr = exp.section(ds, variant, "transformer")
            yield "train_transformer", ds, variant, gpt_peak(tr, vq["quantizer"]["n_codes"], grid * grid,
                                                             gpus["train_transformer"])


def check_fits(exp, gpus: dict[str, int], gpu_mem_gib: dict[str, float]) -> None:
    """A ValueError naming the key when a training job cannot fit the GPU memory declared for its rule (rules
    without a declaration, or on the CPU (gpus 0), are not checked)."""
    for rule, ds, variant, peak in training_peaks(exp, {r: max(1, n) for r, n in gpus.items()}):
        mem = gpu_mem_gib.get(rule)
        if not mem or gpus[rule] < 1 or fits(peak, mem):
            continue
        section = "vqgan" if rule == "train_vqgan" else "transformer"
        train = exp.section(ds, variant, section)["train"]
        need = next(a for a in range(train["grad_accum"], train["batch_size"] + 1)
                    if a == train["batch_size"] or fits(_with_accum(exp, rule, ds, variant, gpus, a), mem))
        raise ValueError(
            f"config key {section}.train.grad_accum (dataset {ds}, variant {variant}): {rule} needs "
            f"{peak.total / GIB:.0f} GiB per GPU (per-GPU batch {peak.micro_batch} = batch_size {train['batch_size']} "
            f"/ {gpus[rule]} GPU(s) / grad_accum {train['grad_accum']}; activations {peak.activations / GIB:.0f} GiB) "
            f"but its GPUs have {mem:g} GiB (gpu_mem_gib; {USABLE:.0%} usable); set grad_accum to {need} or more, "
            f"or give {rule} more GPUs (bench/plan.py prints the plan)")


def _with_accum(exp, rule: str, ds: str, variant: str, gpus: dict[str, int], accum: int) -> Peak:
    section = "vqgan" if rule == "train_vqgan" else "transformer"
    sec = dict(exp.section(ds, variant, section))
    sec["train"] = {**sec["train"], "grad_accum": accum}
    entry = exp.datasets[ds]
    if rule == "train_vqgan":
        return vqgan_peak(sec, entry["resolution"], gpus[rule])
    vq = exp.section(ds, variant, "vqgan")
    grid = entry["resolution"] // 2 ** (len(vq["model"]["ch_mult"]) - 1)
    return gpt_peak(sec, vq["quantizer"]["n_codes"], grid * grid, gpus[rule])
