"""The README's test commands are what CI runs, the README's two commands come first, and the test tiers hold:
the default `pytest` leaves the slow tier (marker `slow`) out, `pytest -m slow` runs it."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, readme_commands, repo_copy, snakemake_env

SLOW_TIER_COMMAND = "pytest -m slow"


def ci_command(tag: str) -> str:
    """The line of .ci/run under its `# <tag> (same line as in README.md)` comment."""
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    return ci[ci.index(f"# {tag} (same line as in README.md)") + 1].strip()


def test_ci_runs_the_readme_test_command():
    first_two = readme_commands()[:2]
    assert first_two[1] == ci_command("TEST-COMMAND"), \
        f"README test command:\n{first_two[1]}\n.ci/run runs:\n{ci_command('TEST-COMMAND')}"
    assert first_two[1].endswith("&& pytest"), "the default tier is plain `pytest` (pyproject's addopts)"


def test_ci_runs_the_readme_slow_tier_command_after_the_default_tier():
    assert SLOW_TIER_COMMAND in readme_commands(), f"README has no ```bash block `{SLOW_TIER_COMMAND}`"
    assert ci_command("SLOW-TEST-COMMAND") == SLOW_TIER_COMMAND
    ci = (REPO / ".ci" / "run").read_text()
    assert ci.index("# TEST-COMMAND") < ci.index("# SLOW-TEST-COMMAND"), "the fast tier runs first"
    # `set -e`: either tier failing fails CI; an empty slow tier (pytest exit 5) fails it too
    assert "set -euo pipefail" in ci and "|| true" not in ci and "|| [" not in ci


def test_readme_main_command_builds_the_fid_table_on_the_default_config():
    first = readme_commands()[0]
    assert first.endswith("snakemake --cores all results/fid_table.csv")
    assert "--configfile" not in first


# Whole modules of the slow tier: the tiny DAG end to end (with the kill -9 recovery run), the real SLURM run.
SLOW_MODULES = ("tests/test_e2e.py", "tests/test_slurm.py")
# Tests of the slow tier wherever they live: kill -9 then resume, and multi-process gloo/DDP runs.
# (test_quantize's two-process gloo check stays in the default tier: 3 s.)
SLOW_NAMES = ("kill_9", "resume_after_kill", "two_process", "two_gloo", "two_machines")


def _test_names(path) -> set[str]:
    tree = ast.parse((REPO / path).read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def _collect(*tier: str) -> subprocess.Popen:
    """`pytest --collect-only -q` of a tier: none for the default one (pyproject's addopts), `-m slow` for the slow."""
    return subprocess.Popen([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *tier],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"})


def _node_ids(proc: subprocess.Popen) -> list[str]:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{' '.join(proc.args[3:])} failed ({proc.returncode}):\n{out[-3000:]}{err[-3000:]}"
    return [ln for ln in out.splitlines() if "::" in ln]


def test_the_slow_marker_is_registered_and_strict(pytestconfig):
    markers = [m.split(":")[0].strip() for m in pytestconfig.getini("markers")]
    assert {"slow", "e2e", "slurm"} <= set(markers), markers
    addopts = pytestconfig.getini("addopts")  # shlex-split: ['-ra', '--strict-markers', '-m', 'not slow']
    assert "--strict-markers" in addopts and addopts[addopts.index("-m") + 1] == "not slow", addopts


def test_the_heavy_tests_are_in_the_slow_tier_and_not_in_the_default_one():
    """A refactor that drops a `slow` mark (or renames the marker) moves minutes back into the default `pytest`:
    the slow tier must hold every test of the DAG modules and every kill/resume and multi-process test."""
    slow_run, default_run = _collect("-m", "slow"), _collect()  # both at once: about 7 s each on a quiet machine
    slow, default = _node_ids(slow_run), _node_ids(default_run)
    assert slow and default and not set(slow) & set(default)
    slow_functions = {(ln.split("::")[0], ln.split("::")[-1].split("[")[0]) for ln in slow}
    for module in SLOW_MODULES:
        missing = sorted(name for name in _test_names(module) if (module, name) not in slow_functions)
        assert not missing, f"{module}: not in the slow tier: {missing}"
    heavy_in_default = [ln for ln in default if any(s in ln.split("::")[-1] for s in SLOW_NAMES)]
    assert not heavy_in_default, f"kill/resume or multi-process tests in the default tier: {heavy_in_default}"
    for name in SLOW_NAMES:  # the patterns still name real tests (a rename would empty the check above)
        assert any(name in ln.split("::")[-1] for ln in slow), f"no slow test is named *{name}*"
def _readme_block(marker: str) -> list[str]:
    """The lines of the README's ```bash block that contains `marker`."""
    block = next(b for b in readme_commands() if marker in b)
    return [ln for ln in block.splitlines() if ln.strip()]


def _written_file(line: str) -> str:
    # the last `> file` of a command line is the picture or text it leaves behind
    return line.split("#")[0].rsplit(">", 1)[1].split()[0]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_readme_dag_and_rulegraph_lines_run_as_written_and_leave_a_picture(tmp_path, index):
    line = [ln for ln in _readme_block("--rulegraph") if "--report" not in ln][index]
    if " dot -T" in line and shutil.which("dot") is None:
        pytest.skip("Graphviz's `dot` is not installed (apt-get install graphviz)")
    clone = repo_copy(tmp_path / "clone")
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", line], cwd=clone, env=snakemake_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{line}\n{proc.stderr[-3000:]}"
    out = clone / _written_file(line)
    assert out.is_file() and out.stat().st_size > 1000, f"{line}: {out.name} is empty or tiny"
    head = out.read_bytes()[:64]
    assert head.startswith((b"\x89PNG", b"<?xml", b"---")), f"{out.name} starts with {head!r}"
