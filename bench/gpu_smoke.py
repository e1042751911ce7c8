"""GPU smoke test: the pipeline's GPU path end to end on one machine, in about 10 minutes on one GPU.

    python bench/gpu_smoke.py                    # from the repository root, in the project's environment
    python bench/gpu_smoke.py --list             # the checks it makes, one line each
    python bench/gpu_smoke.py --only layout,step-syncs

The checks (`--list`), in order: what the machine has; the transformer's fused AdamW; one training step of each loop
with host syncs made errors; peak memory of a step at the paper's per-GPU batch for both models; the VQGAN step
in channels_last vs NCHW and with cudnn.benchmark off vs on (what sets `vqgan.train.vqgan.MEMORY_FORMAT`); the
tiny DAG through Snakemake with gpu=1 and bf16 everywhere; a run resumed from a checkpoint on CUDA against an
uninterrupted one; with 2+ GPUs, one DDP run of 2 processes (NCCL); throughput at the paper's sizes; predicted vs
measured memory and step time once a plan predicts them.

Prints everything; exits 1 on any failure, 0 when all passed, and 0 with "skipped" on a machine without CUDA.
`--cpu` runs the same script on the CPU at toy sizes (expecting "cpu" everywhere; host syncs recorded by
tests/host_syncs.py instead of CUDA's sync debug mode): a test of the script itself.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GPU_RULES = ("train_vqgan", "eval_vqgan", "encode", "train_transformer", "sample", "fid")
failures: list[str] = []
DEVICE = "cuda"  # what every job must report; "cpu" with --cpu


def say(msg: str) -> None:
    print(msg, flush=True)


def check(ok: bool, what: str) -> bool:
    say(f"  {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)
    return ok


def run(cmd: list[str], cwd: Path, timeout: float, log: Path, hooks: dict[str, str] | None = None) -> bool:
    """`hooks`: VQGAN_TEST_* settings of tests/hooks/sitecustomize.py (that folder then goes first on PYTHONPATH)."""
    path = [str(REPO / "tests" / "hooks")] if hooks else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(REPO), os.environ.get("PYTHONPATH", "")]),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **(hooks or {})}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return check(False, f"{' '.join(cmd[:6])} ... finished within {timeout:.0f} s")
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        say((proc.stdout + proc.stderr)[-4000:])
    return check(proc.returncode == 0, f"{' '.join(cmd[:6])} ... ({time.perf_counter() - t0:.0f} s, log {log})")


def machine() -> None:
    if DEVICE == "cpu":
        say(f"--cpu: torch {torch.__version__}, {os.cpu_count()} CPUs; toy sizes, every job expected on the CPU")
        return
    say(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
        f"{torch.cuda.device_count()} GPU(s), {os.cpu_count()} CPUs")
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        say(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}")
    check(torch.cuda.is_bf16_supported(), "bf16 supported")


def fused_optimizer_step() -> None:
    from vqgan.train.transformer import TrainConfig, build_model, gpt_config

    gcfg = gpt_config({"n_layer": 2, "n_head": 4, "n_embd": 128}, {"n_codes": 64, "n_classes": 2, "grid": [4, 4]})
    model, opt = build_model(gcfg, TrainConfig.from_dict({}), torch.device(DEVICE))
    check(bool(opt.defaults.get("fused")) == (DEVICE == "cuda"),
          f"AdamW {'fused ' if DEVICE == 'cuda' else ''}built over {DEVICE} parameters (torch {torch.__version__})")
    x = torch.randint(0, 64, (8, 16), device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        _, loss = model(x[:, :-1], torch.zeros(8, dtype=torch.long, device=DEVICE), targets=x)
    loss.backward()
    opt.step()
    check(all(torch.isfinite(p).all() for p in model.parameters()), f"one bf16 step, loss {loss.item():.3f}")


# ----------------------------------------------------------------------------------------------------------------
# One training step in this process, the loops' own step functions (gan_step, gpt_step)


def paper_sections(lpips: bool) -> dict:
    """config/paper.yaml's VQGAN (toy sizes with --cpu), the discriminator on from step 0 (its memory counts)."""
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    vq = {k: dict(paper["vqgan"][k]) for k in ("model", "quantizer", "loss")}
    vq["loss"].update(disc_start=0, perceptual_weight=1.0 if lpips else 0.0)
    if DEVICE == "cpu":
        vq["model"].update(ch=16, ch_mult=[1, 2], attn_resolutions=[], num_res_blocks=1)
        vq["quantizer"].update(n_codes=64, code_dim=8)
        vq["loss"]["perceptual_weight"] = 0.0
    return vq


def vqgan_stepper(work: Path, per_gpu: int, res: int, lpips: bool):
    """-> step(i): one VQGAN training step on a fixed random batch, as the loop runs it (bf16)."""
    from vqgan.train.loop import FiniteGuard, Run
    from vqgan.train.vqgan import OUTPUTS, TrainConfig, gan_step, prepare_gan, split_config, to_model_input

    sections = split_config({**paper_sections(lpips), "train": {"batch_size": per_gpu, "precision": "bf16",
                                                                 "steps": 10**6}})
    tc = TrainConfig.from_dict(sections["train"])
    run = Run(work / "state", tc, work / "out", OUTPUTS)
    gan = prepare_gan(run, sections, tc, res, str(REPO / "resources" / "weights"))
    run.guard, device = FiniteGuard(run.accelerator), run.accelerator.device
    frames = torch.randint(0, 256, (per_gpu, res, res, 3), dtype=torch.uint8)
    frames = frames.pin_memory() if DEVICE == "cuda" else frames
    gan.model.train()

    def step(i: int) -> None:
        gan_step(run, gan, to_model_input(frames, None, device), None, i, tc)
    return step


def gpt_stepper(work: Path, per_gpu: int):
    """-> step(i): one transformer training step (the paper's 24 x 1024 over 16x16 codes; toy with --cpu)."""
    from vqgan.train.loop import FiniteGuard, Run
    from vqgan.train.transformer import OUTPUTS, TrainConfig, gpt_config, gpt_step, micro_batch, prepare_gpt

    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    model = paper["transformer"]["model"] if DEVICE == "cuda" else {"n_layer": 2, "n_head": 2, "n_embd": 32}
    side, n = (16, 4096) if DEVICE == "cuda" else (4, 64)
    gcfg = gpt_config(model, {"n_codes": 1024, "n_classes": 2, "grid": [side, side]})
    tc = TrainConfig.from_dict({"batch_size": per_gpu, "precision": "bf16", "steps": 10**6, "pkeep": 0.9,
                                "p_uncond": 0.1})
    run = Run(work / "state", tc, work / "out", OUTPUTS)
    model, opt, _ = prepare_gpt(run, gcfg, tc)
    run.guard, run.start, device = FiniteGuard(run.accelerator), 0, run.accelerator.device
    codes = torch.randint(0, 1024, (n, side * side), device=device)
    labels = torch.randint(0, 2, (n,), device=device)
    sampler = run.batch_sampler(n)
    model.train()

    def step(i: int) -> None:
        batch = micro_batch(codes, labels, sampler, i, tc, gcfg.vocab_size, slice(0, per_gpu), per_gpu)
        gpt_step(run, model, opt, batch, i, tc)
    return step


def free_memory() -> None:
    import gc

    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _syncs_of_second_step(make) -> list[str]:
    """What the second step of `make()` syncs on (the first builds optimizer state, may initialise codebooks): on
    CUDA the error of its sync debug mode; on the CPU, what tests/host_syncs.py records (it must see the models
    built, or it would count their weights as host constants)."""
    if DEVICE == "cuda":
        step = make()
        step(0)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            step(1)
            torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize()
            return []
        except RuntimeError as e:
            return [str(e).splitlines()[0]]
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sys.path.insert(0, str(REPO / "tests"))
    from host_syncs import HostSyncs

    with HostSyncs() as syncs:
        step = make()
        step(0)
        before = len(syncs.events)
        step(1)
    return syncs.events[before:]


def step_syncs(work: Path) -> None:
    for name, make in (("VQGAN", lambda: vqgan_stepper(work / "sync_vq", 2, 256 if DEVICE == "cuda" else 32, False)),
                       ("transformer", lambda: gpt_stepper(work / "sync_gpt", 4))):
        events = _syncs_of_second_step(make)
        check(not events, f"{name} training step without a host sync{': ' + '; '.join(events[:5]) if events else ''}")
        free_memory()


def peak_memory(work: Path, gpus: int) -> None:
    """Peak memory of a step at the paper's global batch split over `gpus` GPUs (the profile's GPUs per job)."""
    from vqgan.io.weights import converted_pair

    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    lpips = converted_pair(REPO / "resources" / "weights") is not None
    for name, batch, make in (
            ("VQGAN 256 px", paper["vqgan"]["train"]["batch_size"],
             lambda b: vqgan_stepper(work / "mem_vq", b, 256 if DEVICE == "cuda" else 32, lpips)),
            ("transformer", paper["transformer"]["train"]["batch_size"], lambda b: gpt_stepper(work / "mem_gpt", b))):
        per_gpu = max(1, batch // gpus) if DEVICE == "cuda" else 2
        free_memory()
        try:
            step = make(per_gpu)
            for i in range(2):  # the second step holds optimizer state and the previous step's frees
                step(i)
        except torch.cuda.OutOfMemoryError:
            check(False, f"{name}: the paper's batch {batch} on {gpus} GPU(s) = {per_gpu} per GPU does not fit; "
                         "give the job more GPUs")
            step = None
        else:
            if DEVICE == "cuda":
                torch.cuda.synchronize()
                peak, total = torch.cuda.max_memory_allocated(), torch.cuda.get_device_properties(0).total_memory
                check(peak < 0.95 * total, f"{name}, {per_gpu} per GPU (paper batch {batch} / {gpus} GPU(s)): peak "
                                           f"{peak / 2**30:.1f} of {total / 2**30:.0f} GiB"
                                           f"{'' if lpips or name != 'VQGAN 256 px' else ' (without LPIPS)'}")
            else:
                check(True, f"{name}: two toy steps ran (peak memory is measured on CUDA only)")
        del step
        free_memory()


def _time_steps(step, n: int) -> float:
    for i in range(2):
        step(i)
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for i in range(2, 2 + n):
        step(i)
    sync()
    return (time.perf_counter() - t0) / n


def layout(work: Path) -> None:
    """The VQGAN step in NCHW and channels_last, cudnn.benchmark off and on: what MEMORY_FORMAT should say."""
    import vqgan.train.vqgan as tv

    per_gpu, res, n = (8, 256, 10) if DEVICE == "cuda" else (2, 16, 1)
    saved, times = dict(tv.MEMORY_FORMAT), {}
    for fmt_name, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        for bench in (False, True):
            tv.MEMORY_FORMAT[DEVICE] = fmt
            torch.backends.cudnn.benchmark = bench
            try:
                times[fmt_name, bench] = _time_steps(vqgan_stepper(work / f"layout_{fmt_name}_{bench}", per_gpu, res,
                                                                   False), n)
            finally:
                tv.MEMORY_FORMAT.update(saved)
                torch.backends.cudnn.benchmark = False
            free_memory()
            say(f"  {fmt_name:13s} cudnn.benchmark {'on ' if bench else 'off'}: {times[fmt_name, bench] * 1e3:8.1f} "
                f"ms per step ({per_gpu} x {res} px, bf16)")
    best = min(times, key=times.get)
    say(f"  fastest: {best[0]}, cudnn.benchmark {'on' if best[1] else 'off'} "
        f"({times['NCHW', False] / times[best]:.2f}x the current default, NCHW with benchmark off)")
    check(all(np.isfinite(t) for t in times.values()), "layout variants all ran")


def tiny_dag(work: Path, cores: int) -> None:
    """The CI experiment in a scratch folder (its COCO images through a link to .test/), precision `auto`
    everywhere: bf16 on a GPU of compute capability >= 8.0, what each job's JSON must record."""
    work.mkdir(parents=True)
    (work / ".test").symlink_to(REPO / ".test")
    cfg = yaml.safe_load((REPO / ".test" / "config" / "config.yaml").read_text())
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", "results/fid_table.csv", "-s", str(REPO / "Snakefile"), "-d", str(work),
           "--cores", str(cores), "--workflow-profile", str(REPO / "profiles" / "default"),
           "--configfile", str(work / "config.yaml"), "--set-resources", *(f"{r}:gpu=1" for r in GPU_RULES)]
    if not run(cmd, work, 600, work / "snakemake.log"):
        for log in sorted((work / "logs").rglob("*.log")):
            say(f"--- {log.relative_to(work)}\n{log.read_text()[-1500:]}")
        return
    for stage in ("vqgan", "transformer"):
        for info in sorted((work / "results" / stage).glob("*/train.json")):
            j = json.loads(info.read_text())
            check(j.get("device", "").startswith(DEVICE) and j["precision"] == "bf16",
                  f"{info.relative_to(work)}: device {j.get('device')}, {j['precision']}")
    for s in sorted((work / "results" / "samples").glob("*/samples.json")):
        check(json.loads(s.read_text())["device"].startswith(DEVICE), f"{s.relative_to(work)} sampled on {DEVICE}")
    for f in sorted((work / "results" / "fid").glob("*.json")):
        j = json.loads(f.read_text())
        check(str(j.get("device", "")).startswith(DEVICE) and np.isfinite(j.get("fid") or np.nan),
              f"{f.relative_to(work)}: FID {j.get('fid')} on {j.get('device')}")


def sprite_split(path: Path, n: int, res: int) -> Path:
    from vqgan.data.dataset import write_split

    rng = np.random.default_rng(0)
    imgs = np.zeros((n, res, res, 3), np.uint8)
    imgs[..., 2] = 60
    s = max(4, res // 8)
    for i in range(n):
        y, x = rng.integers(0, res - s, 2)
        imgs[i, y : y + s, x : x + s] = (250, 200, 30)
    return write_split(path, imgs, pd.DataFrame({"source_id": range(n)}), {"source": "gpu_smoke"})


def ddp_two_gpus(work: Path) -> None:
    data = sprite_split(work / "sprites16", 64, 16)
    cfg = {"model": {"ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "z_channels": 8},
           "quantizer": {"kind": "l2", "n_codes": 16, "code_dim": 4, "ema": True, "restart_dead_after": 1},
           "loss": {"perceptual_weight": 0.0, "disc_start": 1, "disc_ch": 8, "disc_layers": 2},
           "train": {"steps": 3, "batch_size": 8, "checkpoint_every": 3, "log_every": 1, "precision": "bf16"}}
    dump = work / "ddp_dump"
    ok = run([sys.executable, "-m", "vqgan.train.launch", "--num-processes", "2", "--", "-m", "vqgan.train.vqgan",
              "--config", json.dumps(cfg), "--data", str(data), "--out", str(work / "ddp"), "--state-dir",
              str(work / "ddp_state")], work, 300, work / "ddp.log", hooks={"VQGAN_TEST_DUMP_WEIGHTS": str(dump)})
    if ok:
        ranks = [json.loads((dump / f"rank{r}.json").read_text())["final"] for r in (0, 1)]
        j = json.loads((work / "ddp" / "train.json").read_text())
        check(ranks[0] == ranks[1] and j["world_size"] == 2, "2 GPUs (NCCL): both ranks end with the same weights")


def resume(work: Path) -> None:
    """A finished 6-step run, its last checkpoint deleted, rerun: it resumes at step 4 and must end where the
    uninterrupted run ended (exactly on the CPU; on CUDA within the noise of its non-deterministic kernels)."""
    from safetensors.torch import load_file

    data = sprite_split(work / "sprites_resume", 32, 16)
    cfg = {"model": {"ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "z_channels": 8},
           "quantizer": {"kind": "l2", "n_codes": 16, "code_dim": 4},
           "loss": {"perceptual_weight": 0.0, "disc_start": 1, "disc_ch": 8, "disc_layers": 2},
           "train": {"steps": 6, "batch_size": 8, "checkpoint_every": 2, "log_every": 2}}
    cmd = [sys.executable, "-m", "vqgan.train.vqgan", "--config", json.dumps(cfg), "--data", str(data),
           "--out", str(work / "resume"), "--state-dir", str(work / "resume_state")]
    if not run(cmd, work, 300, work / "resume_1.log"):
        return
    whole = load_file(work / "resume" / "model.safetensors")
    for last in (work / "resume_state").glob("*/checkpoint-6"):
        shutil.rmtree(last)
    if not run(cmd, work, 300, work / "resume_2.log"):
        return
    log = (work / "resume_2.log").read_text()
    resumed = load_file(work / "resume" / "model.safetensors")
    diff = max(float((whole[k].float() - resumed[k].float()).abs().max()) for k in whole)
    scale = max(float(w.float().abs().max()) for w in whole.values())
    tol = 0.0 if DEVICE == "cpu" else 1e-3 * scale
    check("resumed from step 4" in log and diff <= tol,
          f"resumed from step 4 on {DEVICE}: weights within {diff:.2e} of the uninterrupted run's (allowed {tol:.0e})")
    device = json.loads((work / "resume" / "train.json").read_text())["device"]
    check(device.startswith(DEVICE), f"the resumed run trained on {device}")


def plan(work: Path) -> None:
    """Predicted vs measured memory and step time: needs a plan that predicts them (none yet)."""
    import importlib.util

    if importlib.util.find_spec("vqgan.plan") is None:
        say("  skipped: no plan predicts memory or step time yet (vqgan.plan); compare peak-memory and throughput "
            "with it once one does")
        return
    say("  a plan exists (vqgan.plan): this check is still to be written against its interface")


def throughput(work: Path, gpus: int) -> None:
    from vqgan.io.weights import converted_pair

    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    lpips = converted_pair(REPO / "resources" / "weights") is not None
    vq = {k: paper["vqgan"][k] for k in ("model", "quantizer", "loss")}
    vq["loss"] = {**vq["loss"], "disc_start": 0, "perceptual_weight": 1.0 if lpips else 0.0}
    steps, per_gpu, res, log_every = (30, 8, 256, 10) if DEVICE == "cuda" else (4, 2, 32, 2)
    if DEVICE == "cpu":  # toy sizes: the script's plumbing, not a measurement
        vq["model"] = {**vq["model"], "ch": 16, "ch_mult": [1, 2], "attn_resolutions": [], "num_res_blocks": 1}
        vq["quantizer"] = {**vq["quantizer"], "n_codes": 64, "code_dim": 8}
        vq["loss"]["perceptual_weight"] = 0.0
    vq["train"] = {"steps": steps, "batch_size": per_gpu * gpus, "warmup_steps": 5, "precision": "bf16",
                   "checkpoint_every": 1000, "log_every": log_every}
    data = sprite_split(work / "sprites", 64 if DEVICE == "cpu" else 256, res)
    ok = run([sys.executable, "-m", "vqgan.train.launch", "--num-processes", str(gpus), "--", "-m", "vqgan.train.vqgan",
              "--config", json.dumps(vq), "--data", str(data), "--out", str(work / "vq256"), "--state-dir",
              str(work / "vq256_state"), "--weights-dir", str(REPO / "resources" / "weights")], work, 400,
             work / "vq256.log")
    if ok:
        m = pd.read_csv(work / "vq256" / "metrics.csv")
        say(f"  VQGAN {res} px, {'paper' if DEVICE == 'cuda' else 'toy'} model, bf16, {gpus} {DEVICE} process(es) x {per_gpu} images, discriminator "
            f"on, {'with' if vq['loss']['perceptual_weight'] else 'WITHOUT (no weights in resources/weights)'} LPIPS: "
            f"{m['images_per_s'].iloc[-1]:.1f} img/s over the last {log_every} steps "
            f"({m['images_per_s'].iloc[1]:.1f} over the {log_every} before)")
        check(bool(np.isfinite(m["g_loss"]).all()), "VQGAN losses finite")

    codes = work / "codes256"
    codes.mkdir()
    rng = np.random.default_rng(0)
    side = 16 if DEVICE == "cuda" else 4
    for split, n in (("train", 512), ("val", 64)):
        np.save(codes / f"{split}.npy", rng.integers(0, 1024, (n, side, side)).astype(np.int16))
        np.save(codes / f"{split}_labels.npy", np.arange(n) % 2)
    (codes / "codes.json").write_text(json.dumps({"n_codes": 1024, "grid": [side, side], "n_classes": 2,
                                                  "class_names": ["a", "b"], "counts": {}}))
    model = paper["transformer"]["model"] if DEVICE == "cuda" else {"n_layer": 2, "n_head": 2, "n_embd": 32}
    tr = {"model": model,
          "train": {"steps": steps, "batch_size": 16 * gpus, "warmup_steps": 5, "precision": "bf16",
                    "checkpoint_every": 1000, "eval_every": 1000, "log_every": log_every}}
    ok = run([sys.executable, "-m", "vqgan.train.launch", "--num-processes", str(gpus), "--", "-m",
              "vqgan.train.transformer", "--config", json.dumps(tr), "--codes", str(codes), "--out", str(work / "gpt"),
              "--state-dir", str(work / "gpt_state")], work, 400, work / "gpt.log")
    if ok:
        m = pd.read_csv(work / "gpt" / "metrics.csv")
        say(f"  transformer {model['n_layer']} x {model['n_embd']}, {side * side} codes, bf16, {gpus} {DEVICE} "
            f"process(es) x 16 sequences: {m['tokens_per_s'].iloc[-1]:,.0f} tokens/s "
            f"({m['tokens_per_s'].iloc[-1] / side**2:.0f} images/s)")
        check(bool(np.isfinite(m["loss"]).all()), "transformer losses finite")


def checks(work: Path, args) -> dict[str, tuple[str, object]]:
    """{name: (what it checks, how)}, in the order they run; `--list` prints the first two."""
    gpus = torch.cuda.device_count() if DEVICE == "cuda" else 0
    return {
        "machine": ("torch, CUDA, cuDNN, the GPUs and their memory, bf16 support", machine),
        "fused-adamw": ("the transformer's AdamW fused over parameters already on the GPU, one bf16 step",
                        fused_optimizer_step),
        "step-syncs": ("one training step of each loop (VQGAN, transformer) under "
                       "torch.cuda.set_sync_debug_mode('error'): no host sync between log steps",
                       lambda: step_syncs(work)),
        "peak-memory": ("peak GPU memory of a training step of each model at the paper's per-GPU batch (global batch "
                        f"64 / --gpus-per-job {args.gpus_per_job})", lambda: peak_memory(work, args.gpus_per_job)),
        "layout": ("VQGAN step time in channels_last vs NCHW and with cudnn.benchmark off vs on (decides "
                   "vqgan.train.vqgan.MEMORY_FORMAT; NCHW and off until then)", lambda: layout(work)),
        "tiny-dag": ("the tiny DAG through Snakemake with gpu=1 and bf16: every training, encoding, sampling and FID "
                     "job reports cuda", lambda: tiny_dag(work / "dag", args.cores)),
        "resume": ("a VQGAN run resumed from its checkpoint on CUDA ends with the uninterrupted run's weights",
                   lambda: resume(work)),
        "ddp-nccl": ("with 2+ GPUs, a DDP run of 2 processes over NCCL: both ranks end with the same weights",
                     lambda: ddp_two_gpus(work) if gpus >= 2 else say(f"  skipped: {gpus} GPU(s)")),
        "throughput": ("VQGAN images/s and transformer tokens/s at the paper's sizes through the training CLIs",
                       lambda: throughput(work, 1)),
        "plan": ("predicted vs measured memory and step time, once a plan predicts them", lambda: plan(work)),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--keep", default=None, help="work in this folder and keep it (default: a temporary one)")
    p.add_argument("--cores", type=int, default=min(16, os.cpu_count() or 1), help="Snakemake --cores for the DAG")
    p.add_argument("--cpu", action="store_true", help="test this script on the CPU at toy sizes")
    p.add_argument("--list", action="store_true", help="name each check and what it checks, and exit")
    p.add_argument("--only", default=None, help="comma-separated checks to run (names as --list prints them)")
    p.add_argument("--gpus-per-job", type=int, default=1,
                   help="GPUs a training job gets (the paper's global batch is split over them; default 1)")
    args = p.parse_args()
    global DEVICE
    if args.cpu:
        DEVICE = "cpu"
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif not torch.cuda.is_available() and not args.list:
        say(f"skipped: no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda})")
        return 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as tmp:
        work = Path(args.keep or tmp)
        todo = checks(work, args)
        if args.list:
            for name, (what, _) in todo.items():
                say(f"{name:12s} {what}")
            return 0
        only = args.only.split(",") if args.only else list(todo)
        unknown = sorted(set(only) - set(todo))
        if unknown:
            p.error(f"unknown checks {unknown}; --list names them")
        work.mkdir(parents=True, exist_ok=True)
        for name in only:
            say(f"== {name}: {todo[name][0]}")
            try:
                todo[name][1]()
            except Exception as e:  # report and go on: one broken part must not hide the others
                check(False, f"{name}: {type(e).__name__}: {e}")
    say(f"== {'FAILED: ' + '; '.join(failures) if failures else 'all passed'} ({time.perf_counter() - t0:.0f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
