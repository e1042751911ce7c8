"""The README's test command is what CI runs, and the README's two commands come first."""
from __future__ import annotations

from conftest import REPO, readme_commands


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    ci_command = ci[ci.index("# TEST-COMMAND (same line as in README.md)") + 1].strip()
    first_two = readme_commands()[:2]
    assert first_two[1] == ci_command, f"README test command:\n{first_two[1]}\n.ci/run runs:\n{ci_command}"


def test_readme_main_command_builds_the_fid_table_on_the_default_config():
    first = readme_commands()[0]
    assert first.endswith("snakemake --cores all results/fid_table.csv")
    assert "--configfile" not in first
