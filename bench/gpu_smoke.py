"""GPU smoke test: the pipeline's GPU path end to end on one machine, in about 5 minutes on one GPU.

    python bench/gpu_smoke.py            # from the repository root, in the project's environment

1. what the machine has (torch, CUDA, GPUs, bf16);
2. the transformer's optimizer built the way training builds it (fused AdamW over parameters already on the GPU)
   and one bf16 step;
3. the tiny DAG (.test/config/config.yaml) through Snakemake with gpu=1 on every GPU rule and bf16 everywhere,
   in a scratch folder: every training, encoding, sampling and FID job must report cuda;
4. with 2+ GPUs: one DDP run of 2 processes (NCCL), both ranks ending with the same weights;
5. throughput at the paper's sizes, bf16, through the real training loops: VQGAN images/s at 256 px
   (config/paper.yaml's model, 8 images per GPU, without LPIPS unless its weights are in resources/weights) and
   transformer tokens/s (24 layers x 1024, 256 codes per image).

Prints everything; exits 1 on any failure, 0 when all passed, and 0 with "skipped" on a machine without CUDA.
`--cpu` runs the same script on the CPU at toy sizes (expecting "cpu" everywhere): a test of the script itself.
"""
from __future__ import annotations

import argparse
import json
import os
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--keep", default=None, help="work in this folder and keep it (default: a temporary one)")
    p.add_argument("--cores", type=int, default=min(16, os.cpu_count() or 1), help="Snakemake --cores for the DAG")
    p.add_argument("--cpu", action="store_true", help="test this script on the CPU at toy sizes")
    args = p.parse_args()
    global DEVICE
    if args.cpu:
        DEVICE = "cpu"
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif not torch.cuda.is_available():
        say(f"skipped: no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda})")
        return 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for title, step in (("machine", machine), ("fused AdamW", fused_optimizer_step),
                            ("tiny DAG on CUDA, bf16", lambda: tiny_dag(work / "dag", args.cores)),
                            ("DDP on 2 GPUs", lambda: ddp_two_gpus(work) if torch.cuda.device_count() >= 2
                             else say(f"  skipped: {torch.cuda.device_count()} GPU(s)")),
                            ("throughput", lambda: throughput(work, 1))):
            say(f"== {title}")
            try:
                step()
            except Exception as e:  # report and go on: one broken part must not hide the others
                check(False, f"{title}: {type(e).__name__}: {e}")
    say(f"== {'FAILED: ' + '; '.join(failures) if failures else 'all passed'} ({time.perf_counter() - t0:.0f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
