"""Deployment of the rules: one pinned software environment on every rule (lint-clean), a dry run with
--use-conda, and `gpu=0` meaning the CPU for every rule that could take a GPU."""
from __future__ import annotations

import os
import re
import subprocess

import pytest
import yaml
from conftest import REPO, TEST_CONFIG, run_snakemake
from packaging.specifiers import SpecifierSet
from packaging.version import Version

GPU_RULES = ("train_vqgan", "eval_vqgan", "encode", "train_transformer", "sample", "fid")


def requirement(spec: str) -> tuple[str, str]:
    name, version = re.match(r"^([A-Za-z0-9_.\-\[\]]+?)\s*((?:[=<>!~]=?.*)?)$", spec.strip()).groups()
    return re.sub(r"\[.*\]", "", name).lower().replace("_", "-"), version.replace(" ", "")


def test_the_environment_has_pyprojects_pins_and_the_readmes_torch():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    env = yaml.safe_load((REPO / "workflow" / "envs" / "pipeline.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pinned = dict(requirement(s) for s in pip)
    project = dict(requirement(s) for s in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    readme = (REPO / "README.md").read_text()
    torch_pins = dict(re.findall(r"pip install (?:-q )?torch==(\S+) torchvision==(\S+)", readme))
    assert len(torch_pins) == 1, f"the README installs torch/torchvision in one way: {torch_pins}"
    (torch_v, vision_v), = torch_pins.items()
    assert pinned.pop("torch") == f"=={torch_v}" and pinned.pop("torchvision") == f"=={vision_v}"
    assert Version(torch_v) in SpecifierSet(project.pop("torch"))
    assert Version(vision_v) in SpecifierSet(project.pop("torchvision"))
    assert pinned == project, "workflow/envs/pipeline.yaml and pyproject.toml list different packages or versions"


def test_every_rule_has_its_environment_and_the_linter_is_content():
    proc = run_snakemake("--lint", "--configfile", str(TEST_CONFIG), check=False, timeout=300)
    assert proc.returncode == 0 and "good condition" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-4000:]


def test_dry_run_with_conda_builds_the_dag(tmp_path, monkeypatch):
    """What `snakemake --use-conda -n` asks of conda is `conda info --json`, its version and its channel
    priority; this machine has no conda, so a stand-in answers exactly those (and fails anything else)."""
    stub = tmp_path / "conda"
    stub.write_text('#!/bin/sh\ncase "$*" in\n'
                    '  "info --json") echo \'{"conda_prefix": "/opt/conda", "platform": "linux-64"}\' ;;\n'
                    '  "--version") echo "conda 24.7.1" ;;\n'
                    '  "config --get channel_priority --json") echo \'{"get": {"channel_priority": "strict"}}\' ;;\n'
                    '  *) echo "stub conda cannot $*" >&2; exit 1 ;;\nesac\n')
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    proc = run_snakemake("--use-conda", "-n", "--configfile", str(TEST_CONFIG), check=False, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "This was a dry-run" in out, out[-4000:]


@pytest.mark.parametrize("gpu", [0, 1])
def test_gpu_0_hides_the_gpus_of_every_rule_that_could_use_one(gpu):
    proc = run_snakemake("-n", "-p", "--forceall", "--configfile", str(TEST_CONFIG), "--set-resources",
                         *(f"{r}:gpu={gpu}" for r in GPU_RULES), timeout=300)
    commands = re.findall(r"^rule (\w+):.*?^Shell command: (.*?)$", proc.stdout, re.S | re.M)
    seen = {rule for rule, _ in commands}
    assert set(GPU_RULES) <= seen, f"dry run showed no command for {set(GPU_RULES) - seen}"
    for rule, cmd in commands:
        if rule in GPU_RULES:
            # the rule's own launcher (vqgan.gpus) up to its `--`, then a command that shows what it was given
            prefix = cmd[: cmd.index(" -- ") + 4]
            shown = subprocess.run(["bash", "-c", prefix + """bash -c 'echo "[$CUDA_VISIBLE_DEVICES]"'"""],
                                   capture_output=True, text=True,
                                   env={**os.environ, "CUDA_VISIBLE_DEVICES": "0"}).stdout.strip()
            assert shown == ("[]" if gpu == 0 else "[0]"), f"{rule} with gpu={gpu}: {prefix!r} -> {shown}"
