"""Peak memory of the data stages (prepare_coco, collect_atari) at two sizes: it must not grow with the data.

    python bench/data_memory.py                        # COCO and Atari, 1k and 10k images/frames at 256 px
    python bench/data_memory.py --which coco --sizes 1000 10000 --coco-full-annotations

Each stage runs as its command-line tool in a child process (as a Snakemake job would), and a sampler sums the
resident memory (RSS) of that process and all its workers every 20 ms; the peak of that sum is what a SLURM
memory limit (a cgroup) has to hold. RSS counts pages shared by forked workers once per process, so the sum
overstates a little. Page cache (the images.npy being written) is not RSS: the kernel writes it back and drops
it under a cgroup limit instead of killing the job.

- COCO: a synthetic COCO root whose train2017 holds max(--sizes) images: copies (symlinks) of the real images
  in .test/data/tiny_coco and copies of their annotations (9.4 per image, as many as COCO has), so every
  size selects from the same annotation file and only the number of images prepared changes.
  `--coco-full-annotations` adds a run that selects 1000 images from an annotation file with as many images as
  train2017 (118,287) and their annotations: the fixed cost of pycocotools' index that a real run pays.
- Atari: `--atari-games` (default MsPacman and Pong) with frames_per_game = each size; the games in
  `--go-explore` (default MsPacman) with the go_explore collector, the others with sticky-random play.
  `--atari-games Breakout Pong --go-explore Breakout` measures the most object truth (~109 objects a Breakout
  frame) through the explorer's candidates.

Exits 1 when the larger size peaks above `--max-ratio` (1.2) times the smaller.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil  # a dependency of accelerate

REPO = Path(__file__).resolve().parents[1]
TINY_COCO = REPO / ".test" / "data" / "tiny_coco"
COCO_TRAIN2017_IMAGES = 118_287


def tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """(sum of RSS over the process and its descendants, the largest single RSS) in bytes."""
    total = biggest = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:  # the process has just ended
        return 0, 0
    for p in procs:
        try:
            rss = p.memory_info().rss
        except psutil.Error:
            continue
        total += rss
        biggest = max(biggest, rss)
    return total, biggest


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run `cmd`, sampling its process tree's RSS; -> seconds and peaks in MB. Raises on failure."""
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, **(env or {})})
    proc = psutil.Process(child.pid)
    peak = {"sum": 0, "max": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            total, biggest = tree_rss(proc)
            peak["sum"], peak["max"] = max(peak["sum"], total), max(peak["max"], biggest)
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = child.communicate()
    done.set()
    sampler.join()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({child.returncode}):\n{out[-3000:]}")
    return {"seconds": time.perf_counter() - t0, "peak_tree_mb": peak["sum"] / 2**20,
            "peak_process_mb": peak["max"] / 2**20}


# ---------------------------------------------------------------------------------------------------------------
# COCO


def synthetic_coco(root: Path, n_train: int, n_val: int) -> Path:
    """A COCO root in the official layout with n_train/n_val images made of the tiny COCO's images and
    annotations, cycled (image i is template i % 50 under a new id and file name; a symlink, no copy)."""
    for split, n in (("train", n_train), ("val", n_val)):
        src = json.loads((TINY_COCO / "annotations" / f"instances_{split}2017.json").read_text())
        by_image: dict[int, list] = {}
        for a in src["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a)
        folder = root / f"{split}2017"
        folder.mkdir(parents=True, exist_ok=True)
        (root / "annotations").mkdir(exist_ok=True)
        ann_id = 1
        # written piece by piece: the full-size file would otherwise be a few GB of Python objects here
        with open(root / "annotations" / f"instances_{split}2017.json", "w") as f:
            f.write('{"info": {}, "licenses": [], "categories": ' + json.dumps(src["categories"]) + ', "images": [')
            for i in range(n):
                t = src["images"][i % len(src["images"])]
                name = f"{i + 1:012d}.jpg"
                link = folder / name
                if not link.exists():
                    link.symlink_to(TINY_COCO / f"{split}2017" / t["file_name"])
                f.write(("," if i else "") + json.dumps({**t, "id": i + 1, "file_name": name}))
            f.write('], "annotations": [')
            for i in range(n):
                t = src["images"][i % len(src["images"])]
                for a in by_image.get(t["id"], []):
                    f.write(("," if ann_id > 1 else "") + json.dumps({**a, "id": ann_id, "image_id": i + 1}))
                    ann_id += 1
            f.write("]}")
    return root


def bench_coco(work: Path, sizes: list[int], resolution: int, workers: int, full: bool) -> list[dict]:
    root = synthetic_coco(work / "coco", max(sizes), max(10, max(sizes) // 20))
    rows = []
    runs = [(n, root, f"{n} train + {max(1, n // 20)} val images") for n in sizes]
    if full:
        big = synthetic_coco(work / "coco_full", COCO_TRAIN2017_IMAGES, 5000)
        size = (big / "annotations" / "instances_train2017.json").stat().st_size / 2**20
        runs.append((1000, big, f"1000 of {COCO_TRAIN2017_IMAGES} train images ({size:.0f} MB annotations)"))
    for n, r, what in runs:
        out = work / f"coco_out_{n}_{r.name}"
        cfg = {"kind": "coco", "resolution": resolution, "train_images": n, "val_images": max(1, n // 20),
               "seed": None}
        m = measure([sys.executable, "-m", "vqgan.data.coco", "prepare", "--config", json.dumps(cfg),
                     "--root", str(r), "--out", str(out), "--workers", str(workers), "--no-progress"])
        written = sum(json.loads((out / s / "manifest.json").read_text())["count"] for s in ("train", "val"))
        rows.append({"stage": "prepare_coco", "size": n, "what": what, "images": written,
                     "gb_written": written * resolution * resolution * 3 / 1e9, **m})
        subprocess.run(["rm", "-rf", str(out)], check=True)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Atari


def bench_atari(work: Path, sizes: list[int], resolution: int, workers: int, games: list[str],
                explore: list[str]) -> list[dict]:
    rows = []
    for n in sizes:
        out = work / f"atari_out_{n}"
        cfg = {"kind": "atari", "resolution": resolution, "games": games, "frames_per_game": n,
               "val_fraction": 0.1, "game_policy": {g: {"name": "go_explore"} for g in explore if g in games}}
        m = measure([sys.executable, "-m", "atari_collect", "--config", json.dumps(cfg), "--out", str(out),
                     "--workers", str(workers), "--no-progress"])
        what = " + ".join(g + " (go_explore)" * (g in explore) for g in games)
        rows.append({"stage": "collect_atari", "size": n, "what": f"{what} x {n} frames",
                     "images": n * len(games), "gb_written": n * len(games) * resolution * resolution * 3 / 1e9, **m})
        subprocess.run(["rm", "-rf", str(out)], check=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--which", nargs="+", choices=["coco", "atari"], default=["coco", "atari"])
    p.add_argument("--sizes", type=int, nargs=2, default=[1000, 10000], help="images (COCO) / frames per game (Atari)")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--workers", type=int, default=2, help="decoding / emulator processes")
    p.add_argument("--atari-games", nargs="+", default=["MsPacman", "Pong"])
    p.add_argument("--go-explore", nargs="*", default=["MsPacman"], metavar="GAME",
                   help="games of --atari-games collected with go_explore (the others: sticky-random)")
    p.add_argument("--coco-full-annotations", action="store_true",
                   help="also measure a selection from an annotation file as large as train2017's")
    p.add_argument("--max-ratio", type=float, default=1.2)
    p.add_argument("--work-dir", default=None, help="scratch folder (default: a temporary one; needs a few GB)")
    args = p.parse_args()

    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, {args.workers} workers, "
          f"{args.resolution} px", flush=True)
    ok = True
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        work = Path(tmp)
        for which in args.which:
            rows = (bench_coco(work, args.sizes, args.resolution, args.workers, args.coco_full_annotations)
                    if which == "coco" else bench_atari(work, args.sizes, args.resolution, args.workers,
                                                        args.atari_games, args.go_explore))
            for r in rows:
                print(f"{r['stage']:14s} {r['what']:55s} {r['images']:7d} images {r['gb_written']:6.2f} GB "
                      f"{r['seconds']:7.1f} s  peak RSS: {r['peak_tree_mb']:7.0f} MB all processes, "
                      f"{r['peak_process_mb']:6.0f} MB largest", flush=True)
            small, large = rows[0], rows[1]
            ratio = large["peak_tree_mb"] / small["peak_tree_mb"]
            verdict = "ok" if ratio <= args.max_ratio else "FAIL"
            ok &= ratio <= args.max_ratio
            print(f"{rows[0]['stage']}: {large['images'] / small['images']:.0f}x the data, "
                  f"{ratio:.2f}x the peak memory ({verdict}: limit {args.max_ratio}x)", flush=True)
    print(f"load average now {os.getloadavg()[0]:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
