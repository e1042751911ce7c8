"""Memory and time plan of every training and inference job of a config, on GPUs, computed on this CPU.

    python bench/plan.py config/paper.yaml --profile profiles/slurm
    python bench/plan.py config/paper.yaml --gpus 1 --gpu-mem-gib 80 --tflops 989 --mfu 0.35

Per job: peak memory per GPU (vqgan/memory.py: parameters, grads, Adam, DDP buckets, bf16 weight copies, the saved
activations of the per-GPU micro-batch as vqgan/measure.py measures them on fake tensors at the real size, plus the
stated margin) and GPU-hours = FLOPs (torch's FlopCounterMode: forward + backward of G and LPIPS, and of D from
loss.disc_start on) / (tflops x MFU). With --profile, each job's GPUs, nodes, mem_mb, runtime and gpu_mem_gib are
read from the profile's set-resources (Python expressions over `attempt`, as Snakemake evaluates them) and the line
says whether they cover the plan: memory per GPU, host memory per node (HOST_GIB per process, an assumption), and
the wall time at attempt 1 and summed over all attempts (a killed training resumes from its newest checkpoint on
the retry, so the attempts add up, less up to `checkpoint_every` steps lost per retry). docs/gpu.md has the table
for config/paper.yaml and the assumptions.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vqgan import memory as M  # noqa: E402
from vqgan.config.experiment import check_experiment  # noqa: E402

HOST_GIB = 4.0  # host RSS of one training process (torch, CUDA context, loader): the 3-4 GB, to be measured
TRAIN_RULES = ("train_vqgan", "train_transformer")
INFER_RULES = ("eval_vqgan", "encode", "sample", "fid")
INCEPTION_FLOPS = 2 * 5.7e9  # per 299 px image, forward (Szegedy et al. 2016: 5.7 G multiply-adds)


def load_config(paths: list[str]) -> object:
    cfg: dict = {}
    for p in paths:
        cfg = {**cfg, **(yaml.safe_load(Path(p).read_text()) or {})}
    from atari_collect.config import DATASET_RULES

    return check_experiment(cfg, {"atari": DATASET_RULES})


def profile_resources(path: str | None) -> tuple[dict, int]:
    """(set-resources by rule, retries) of a Snakemake profile folder (or {} and 0)."""
    if not path:
        return {}, 0
    prof = yaml.safe_load((Path(path) / "config.yaml").read_text())
    return prof.get("set-resources") or {}, int(prof.get("retries") or 0)


def at_attempt(value, attempt: int):
    """A profile resource as Snakemake evaluates it: a string is a Python expression over `attempt`."""
    return eval(value, {"__builtins__": {}}, {"attempt": attempt}) if isinstance(value, str) else value


def vqgan_cost(section: dict, resolution: int):
    """Measured (fake tensors) step costs of the VQGAN: (before disc_start, after), each a measure.StepCost."""
    from vqgan.config.build import loss_config, vqgan_config
    from vqgan.measure import affine, fake_mode, vqgan_step
    from vqgan.models.losses import VQLoss
    from vqgan.models.lpips import LPIPS
    from vqgan.models.vqgan import VQGAN

    res = section["train"].get("crop") or resolution
    prec = section["train"]["precision"]
    lpips = LPIPS() if section["loss"]["perceptual_weight"] > 0 else None  # real: it builds on the meta device
    with fake_mode():
        model, loss = VQGAN(vqgan_config(res, section)), VQLoss(loss_config(section["loss"]), lpips)
        return affine(vqgan_step(model, loss, res, prec, False)), affine(vqgan_step(model, loss, res, prec, True))


def gpt_cost(section: dict, vocab: int, block: int):
    from vqgan.config.build import gpt_config
    from vqgan.measure import affine, fake_mode, gpt_step
    from vqgan.models.gpt import GPT

    with fake_mode():
        model = GPT(gpt_config(vocab, 1, block, section["model"]))
        return affine(gpt_step(model, block, section["train"]["precision"]))


def vqgan_forward_flops(section: dict, resolution: int) -> tuple[float, float]:
    """(encoder + quantizer, decoder) forward FLOPs per image."""
    import torch

    from vqgan.config.build import vqgan_config
    from vqgan.measure import fake_mode, forward_flops
    from vqgan.models.vqgan import VQGAN

    with fake_mode():
        m = VQGAN(vqgan_config(resolution, section)).eval()
        x = torch.randn(1, 3, resolution, resolution)
        enc = forward_flops(lambda: m.quant_conv(m.encoder(x)))
        z = torch.randn(1, m.cfg.z_channels, resolution // m.cfg.downsample, resolution // m.cfg.downsample)
        dec = forward_flops(lambda: m.decoder(z))
    return enc, dec


class Planner:
    def __init__(self, exp, resources: dict, retries: int, args):
        self.exp, self.res, self.retries, self.a = exp, resources, retries, args

    def job(self, rule: str) -> dict:
        """The rule's GPUs, nodes, gpu_mem_gib, and mem_mb/runtime per attempt (profile, else the options)."""
        r = self.res.get(rule, {})
        attempts = range(1, self.retries + 2)
        return {"gpu": int(at_attempt(r.get("gpu", self.a.gpus), 1)) or 1,
                "nodes": int(at_attempt(r.get("nodes", 1), 1)),
                "gpu_mem_gib": float(at_attempt(r.get("gpu_mem_gib", self.a.gpu_mem_gib), 1)),
                "mem_mb": [at_attempt(r["mem_mb"], a) for a in attempts] if "mem_mb" in r else None,
                "runtime": [at_attempt(r["runtime"], a) for a in attempts] if "runtime" in r else None}

    def hours(self, flops: float) -> float:
        return flops / (self.a.tflops * 1e12 * self.a.mfu) / 3600

    def covers(self, job: dict, peak_gib: float, gpu_hours: float, train: bool) -> str:
        """Whether the profile's numbers cover the plan, in words."""
        out = [f"gpu_mem_gib {job['gpu_mem_gib']:g}: " + ("fits" if peak_gib <= M.USABLE * job["gpu_mem_gib"]
                                                          else "DOES NOT FIT")]
        local = max(1, job["gpu"] // job["nodes"])
        if job["mem_mb"]:
            need = local * HOST_GIB * 1024 if train else HOST_GIB * 1024
            ok = job["mem_mb"][0] >= need
            out.append(f"mem_mb {job['mem_mb'][0]} per node {'covers' if ok else 'DOES NOT COVER'} ~{need:.0f}")
        if job["runtime"]:
            wall = gpu_hours / job["gpu"] * 60
            total = sum(job["runtime"])
            verdict = "covers" if job["runtime"][0] >= wall else ("covered over all attempts" if train and
                                                                  total >= 1.1 * wall else "DOES NOT COVER")
            out.append(f"runtime {job['runtime'][0]} min (attempts sum {total}) {verdict} ~{wall:.0f} min wall")
        return "; ".join(out)

    def line(self, rule, ds, variant, peak_gib, gpu_hours, batch, accum, job, train=True) -> str:
        s = (f"{rule} {ds}/{variant}: peak {peak_gib:.1f} GiB per GPU, {gpu_hours:.2g} GPU-hours at "
             f"{self.a.mfu * 100:.0f}% MFU, per-GPU batch {batch}, grad_accum {accum}")
        return s + (f" | gpu={job['gpu']} nodes={job['nodes']}: " + self.covers(job, peak_gib, gpu_hours, train)
                    if self.res else "")


def plan_vqgan(p: Planner, ds: str, variant: str) -> list[str]:
    sec, resolution = p.exp.section(ds, variant, "vqgan"), p.exp.datasets[ds]["resolution"]
    job, tc, loss = p.job("train_vqgan"), sec["train"], sec["loss"]
    before, after = vqgan_cost(sec, resolution)
    peak = M.vqgan_peak(sec, resolution, job["gpu"])
    d_steps = max(0, tc["steps"] - loss["disc_start"]) if loss["disc_weight"] > 0 else 0
    flops = tc["batch_size"] * ((tc["steps"] - d_steps) * before.flops_per_sample + d_steps * after.flops_per_sample)
    lines = [p.line("train_vqgan", ds, variant, peak.total / M.GIB, p.hours(flops), peak.micro_batch,
                    tc["grad_accum"], job)]
    enc, dec = vqgan_forward_flops(sec, resolution)
    params_gib = M.vqgan_params(resolution, sec) * 4 / M.GIB
    big = sec["model"]["ch"] * sec["model"]["ch_mult"][0] * resolution**2 * 4 * 4 / M.GIB  # 4 live fp32 maps
    n_val = min(p.exp.datasets[ds].get("val_images") or 5000, sec["eval"]["max_images"] or 10**9)
    for rule, images, flops_per, batch in (("eval_vqgan", n_val, enc + dec + 2 * 20e9, sec["eval"]["batch_size"]),
                                           ("encode", train_images(p.exp.datasets[ds]) + n_val, enc, 64)):
        gib = params_gib + M.LPIPS_PARAMS * 4 / M.GIB + batch * big + M.WORKSPACE_GIB
        lines.append(p.line(rule, ds, variant, gib, p.hours(images * flops_per), batch, 1, p.job(rule), False))
    return lines


def train_images(entry: dict) -> int:
    if entry["kind"] == "coco":
        return entry.get("train_images") or 118287
    return int(len(entry["games"]) * entry["frames_per_game"] * (1 - entry.get("val_fraction", 0.1)))


def plan_transformer(p: Planner, ds: str, variant: str) -> list[str]:
    sec, vq = p.exp.section(ds, variant, "transformer"), p.exp.section(ds, variant, "vqgan")
    resolution = p.exp.datasets[ds]["resolution"]
    vocab, grid = vq["quantizer"]["n_codes"], resolution // 2 ** (len(vq["model"]["ch_mult"]) - 1)
    block, job, tc = grid * grid, p.job("train_transformer"), sec["train"]
    cost = gpt_cost(sec, vocab, block)
    peak = M.gpt_peak(sec, vocab, block, job["gpu"])
    lines = [p.line("train_transformer", ds, variant, peak.total / M.GIB,
                    p.hours(tc["steps"] * tc["batch_size"] * cost.flops_per_sample), peak.micro_batch,
                    tc["grad_accum"], job)]
    m, smp = sec["model"], p.exp.section(ds, variant, "sample")
    params = M.gpt_params(m["n_layer"], m["n_embd"], vocab, block)
    kv = 2 * m["n_layer"] * smp["batch_size"] * block * m["n_embd"] * 2  # bf16 keys and values
    _, dec = vqgan_forward_flops(vq, resolution)
    big = vq["model"]["ch"] * vq["model"]["ch_mult"][0] * resolution**2 * 4 * 4
    gib = (params * 4 + kv + smp["batch_size"] * big) / M.GIB + M.WORKSPACE_GIB
    flops = smp["n_samples"] * (2 * params * block + dec)
    lines.append(p.line("sample", ds, variant, gib, p.hours(flops), smp["batch_size"], 1, p.job("sample"), False))
    fid = p.exp.config["fid"]
    n = fid["n"] * (len(smp["seeds"]) + 3)  # every seed, the real val and train sets, the reconstructions
    gib = 0.1 + fid["batch_size"] * 64 * 147**2 * 4 * 3 / M.GIB + M.WORKSPACE_GIB  # 3 live 147 px maps of 64 ch
    lines.append(p.line("fid", ds, variant, gib, p.hours(n * INCEPTION_FLOPS), fid["batch_size"], 1, p.job("fid"),
                        False))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("configs", nargs="+", help="config files, merged in order (as --configfile)")
    ap.add_argument("--profile", help="a Snakemake profile folder (profiles/slurm): GPUs, memory, time per job")
    ap.add_argument("--gpus", type=int, default=1, help="GPUs per job where the profile gives none")
    ap.add_argument("--gpu-mem-gib", type=float, default=80.0, help="memory of one GPU, where the profile gives none")
    ap.add_argument("--tflops", type=float, default=989.0, help="peak dense bf16 TFLOP/s of one GPU (H100 SXM: 989)")
    ap.add_argument("--mfu", type=float, default=0.35, help="model FLOP utilisation assumed (docs/gpu.md)")
    a = ap.parse_args(argv)
    exp = load_config(a.configs)
    resources, retries = profile_resources(a.profile)
    p = Planner(exp, resources, retries, a)
    print(f"# {' '.join(a.configs)}: {a.tflops:g} TFLOP/s x {a.mfu:.0%} MFU per GPU; margin {M.WORKSPACE_GIB:g} GiB "
          f"+ {M.ACT_MARGIN:.0%} of activations; usable {M.USABLE:.0%} of gpu_mem_gib; retries {retries}", flush=True)
    bad = 0
    for ds in exp.datasets:
        for variant in exp.variants:
            for line in plan_vqgan(p, ds, variant) + plan_transformer(p, ds, variant):
                print(line, flush=True)
                bad += "DOES NOT" in line
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
