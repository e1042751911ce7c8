"""Paths for the tests: the repository root, the CI experiment and its tiny COCO (100 real COCO-2017 images,
licences in .test/data/ATTRIBUTION.tsv), all inside the repository."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_CONFIG = REPO / ".test" / "config" / "config.yaml"
TINY_COCO = REPO / ".test" / "data" / "tiny_coco"
BIN = Path(sys.executable).parent  # the venv running pytest; its snakemake and our CLIs live here


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each test's in-process training run gets its own Accelerate state: it keeps the first precision a process
    asked for, and `auto` resolves differently under VQGAN_HARDWARE (a job is one run per process)."""
    yield
    if "accelerate" in sys.modules:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_coco() -> Path:
    if not (TINY_COCO / "annotations").is_dir():
        pytest.fail(f"tiny COCO not found at {TINY_COCO}: it is part of the repository (git checkout .test)")
    return TINY_COCO


def snakemake_env(**extra: str) -> dict[str, str]:
    """The environment of a Snakemake run: this venv's tools first on PATH (rules call `python -m vqgan...`)."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def hook_env(base: dict[str, str] | None = None, **hooks: str) -> dict[str, str]:
    """`base` (default: os.environ) with tests/hooks first on PYTHONPATH and the given VQGAN_TEST_* variables set:
    its sitecustomize.py patches the training loops in the command and every process it starts."""
    base = dict(os.environ if base is None else base)
    path = os.pathsep.join(p for p in (str(REPO / "tests" / "hooks"), base.get("PYTHONPATH")) if p)
    return {**base, "PYTHONPATH": path, **hooks}


def run_snakemake(*args: str, cwd: Path = REPO, check: bool = True, timeout: float = 1800,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run Snakemake with this venv's tools first on PATH (rules call `python -m vqgan...`)."""
    env = env or snakemake_env()
    proc = subprocess.run(
        [str(BIN / "snakemake"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def readme_commands() -> list[str]:
    """The README's ```bash blocks, in order."""
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)]


def repo_copy(dest: Path) -> Path:
    """What a user's clone holds for the README's commands (the workflow, its profiles and configs), copied into
    `dest`, so that `snakemake ...` runs there exactly as typed; the tiny CI data (.test) is linked."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "profiles", "config"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    (dest / ".test").symlink_to(REPO / ".test")
    return dest


def write_tiny_stage(root: Path) -> None:
    """A 16 px two-class dataset (`data/{train,val}`), a tiny VQGAN (`vqgan/`), random codes of it (`codes/`) and a
    tiny GPT over them (`gpt/`, with its codes.json): every stage's input, in seconds, for the commands' tests."""
    import json

    import numpy as np
    import pandas as pd

    from vqgan.config.build import gpt_config, vqgan_config
    from vqgan.data.dataset import write_split
    from vqgan.io.checkpoint import save_model
    from vqgan.models.gpt import GPT
    from vqgan.models.vqgan import VQGAN

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        write_split(root / "data" / split, rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8),
                    pd.DataFrame({"source_id": np.arange(n), "label": np.arange(n) % 2}),
                    {"source": "test", "classes": ["a", "b"]})
    save_model(VQGAN(vqgan_config(resolution=16, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
                                  z_channels=8, n_codes=32, code_dim=4)), root / "vqgan")
    codes = root / "codes"
    codes.mkdir()
    for split, n in (("train", 8), ("val", 4)):
        np.save(codes / f"{split}.npy", rng.integers(0, 32, (n, 4, 4)).astype(np.int16))
        np.save(codes / f"{split}_labels.npy", np.arange(n) % 2)
    meta = {"n_codes": 32, "grid": [4, 4], "n_classes": 2, "class_names": ["a", "b"], "counts": {}}
    (codes / "codes.json").write_text(json.dumps(meta))
    save_model(GPT(gpt_config(vocab_size=32, n_classes=2, block_size=16, n_layer=1, n_head=2, n_embd=16)),
               root / "gpt")
    (root / "gpt" / "codes.json").write_text(json.dumps(meta))
