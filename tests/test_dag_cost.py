"""bench/dag_cost.py: wall time, critical path and summed CPU time of one Snakemake run, from its log and the jobs'
benchmark files (a made-up run: two chains on two cores)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("dag_cost", ROOT / "bench" / "dag_cost.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["dag_cost"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


dc = _load()


def block(stamp, rule, jobid, inputs, outputs, wildcards, bench=True):
    lines = [f"[Mon Dec  7 {stamp} 2026]", f"localrule {rule}:"]
    if inputs:
        lines.append(f"    input: {', '.join(inputs)}")
    lines += [f"    output: {', '.join(outputs)}", f"    jobid: {jobid}"]
    if bench:
        lines.append(f"    benchmark: benchmarks/{rule}/{jobid}.tsv")
    lines += [f"    wildcards: {wildcards}", "Shell command: true"]
    return lines


def finished(stamp, jobid, rule):
    return [f"[Mon Dec  7 {stamp} 2026]", f"Finished jobid: {jobid} (Rule: {rule})"]


def test_wall_critical_path_and_cpu_time(tmp_path):
    # data (1) -> a long train (2) -> table (4); and a short train (3) beside it on the other core
    log = [*block("10:00:00", "collect", 1, [], ["d/train"], "ds=a"), *finished("10:10:00", 1, "collect"),
           *block("10:10:00", "train", 2, ["d/train"], ["m/a"], "ds=a, variant=x"),
           *block("10:10:00", "train", 3, ["d/train"], ["m/b"], "ds=a, variant=y"),
           *finished("10:20:00", 3, "train"), *finished("10:40:00", 2, "train"),
           *block("10:40:00", "table", 4, ["m/a", "m/b"], ["t.csv"], "", bench=False),
           *finished("10:40:05", 4, "table")]
    (tmp_path / "run.log").write_text("\n".join(log) + "\n")
    for jobid, wall, cpu in ((1, 600.0, 1100.0), (2, 1800.0, 1790.0), (3, 600.0, 590.0)):
        bench = tmp_path / "benchmarks" / ("collect" if jobid == 1 else "train") / f"{jobid}.tsv"
        bench.parent.mkdir(parents=True, exist_ok=True)
        bench.write_text(f"s\th:m:s\tmax_rss\tcpu_time\n{wall}\t0\t1\t{cpu}\n")
    jobs = dc.parse_log((tmp_path / "run.log").read_text())
    assert jobs[2].inputs == ["d/train"] and jobs[4].inputs == ["m/a", "m/b"] and jobs[3].wildcards == "ds=a, variant=y"
    costs = dc.job_costs(jobs, tmp_path)
    assert costs.loc[4, "wall_s"] == 5.0 and costs["cpu_s"].sum() == pytest.approx(3480.0)
    length, path = dc.critical_path(jobs, costs["wall_s"].to_dict())
    assert path == [1, 2, 4] and length == pytest.approx(600 + 1800 + 5)
    text = dc.report(tmp_path / "run.log", tmp_path, cores=2)
    assert "wall time          2405 s" in text and "critical path      2405 s" in text
    assert "3480 CPU-s  (72% of 2 cores x wall)" in text
