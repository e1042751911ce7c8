"""The README's test command is what CI runs, and the README's two commands come first."""
from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import REPO, readme_commands, repo_copy, snakemake_env


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    ci_command = ci[ci.index("# TEST-COMMAND (same line as in README.md)") + 1].strip()
    first_two = readme_commands()[:2]
    assert first_two[1] == ci_command, f"README test command:\n{first_two[1]}\n.ci/run runs:\n{ci_command}"


def test_readme_main_command_builds_the_fid_table_on_the_default_config():
    first = readme_commands()[0]
    assert first.endswith("snakemake --cores all results/fid_table.csv")
    assert "--configfile" not in first


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
