"""What one Snakemake run cost, from its log and the jobs' benchmark files: wall time, critical path, CPU time.

    python bench/dag_cost.py .snakemake/log/<run>.snakemake.log [--benchmarks benchmarks] [--cores 2]

- wall: the first job's start to the last job's end, as the log's timestamps say;
- critical path: the longest chain of jobs, each after the job that wrote one of its inputs, weighted by each job's
  wall time (benchmark `s`): the least any number of cores could take for this DAG;
- CPU time: the sum of the jobs' `cpu_time` (benchmark files; the job and its children, user + system). Beside
  wall x cores it says how well the run packed the machine.

Snakemake writes each run's log to .snakemake/log/ by itself (also what the terminal shows). A job without a
benchmark file (fid_table, the report's plots) counts with its log timestamps and no CPU time.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
FINISHED = re.compile(r"^Finished jobid: (\d+)")


@dataclass
class Job:
    rule: str
    start: datetime | None = None
    end: datetime | None = None
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    benchmark: str | None = None
    wildcards: str = ""


def parse_log(text: str) -> dict[int, Job]:
    """jobid -> Job: rule, inputs, outputs, benchmark and wildcards of each job block, its start (the timestamp above
    the block) and end (the timestamp above 'Finished jobid')."""
    jobs: dict[int, Job] = {}
    stamp, current = None, None
    for line in text.splitlines():
        if m := STAMP.match(line.strip()):
            stamp = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
        elif re.match(r"^(local)?rule \w+:$", line):
            current = Job(line.split()[-1].rstrip(":"), start=stamp)
        elif current is not None and (m := re.match(r"^    (\w+): (.*)$", line)):
            key, value = m.groups()
            if key in ("input", "output"):
                getattr(current, key + "s").extend(v.strip() for v in value.split(","))
            elif key == "benchmark":
                current.benchmark = value.strip()
            elif key == "wildcards":
                current.wildcards = value.strip()
            elif key == "jobid":
                jobs[int(value)] = current
        elif m := FINISHED.match(line):
            if int(m.group(1)) in jobs:
                jobs[int(m.group(1))].end = stamp
    return jobs


def job_costs(jobs: dict[int, Job], root: Path) -> pd.DataFrame:
    """One row per finished job: rule, wildcards, wall s (benchmark, else timestamps), CPU s (benchmark, else NaN)."""
    rows = []
    for jid, job in jobs.items():
        if job.end is None:
            continue
        wall, cpu = (job.end - job.start).total_seconds() if job.start else float("nan"), float("nan")
        bench = root / job.benchmark if job.benchmark else None
        if bench is not None and bench.is_file():
            b = pd.read_csv(bench, sep="\t")
            wall, cpu = float(b["s"].iloc[-1]), float(b["cpu_time"].iloc[-1])
        rows.append({"jobid": jid, "rule": job.rule, "wildcards": job.wildcards, "wall_s": wall, "cpu_s": cpu})
    return pd.DataFrame(rows).set_index("jobid")


def critical_path(jobs: dict[int, Job], wall: dict[int, float]) -> tuple[float, list[int]]:
    """The longest chain (by summed wall time) through the jobs, a job following each job that wrote an input."""
    writer = {out: jid for jid, job in jobs.items() for out in job.outputs}
    parents = {jid: {writer[i] for i in job.inputs if i in writer and writer[i] != jid} for jid, job in jobs.items()}
    best: dict[int, tuple[float, list[int]]] = {}

    def longest(jid: int) -> tuple[float, list[int]]:
        if jid not in best:
            before = max((longest(p) for p in parents[jid]), default=(0.0, []), key=lambda t: t[0])
            best[jid] = (before[0] + wall.get(jid, 0.0), [*before[1], jid])
        return best[jid]

    return max((longest(j) for j in jobs if j in wall), default=(0.0, []), key=lambda t: t[0])


def report(log: Path, root: Path, cores: int) -> str:
    jobs = parse_log(log.read_text())
    costs = job_costs(jobs, root)
    if costs.empty:
        raise SystemExit(f"error: {log}: no finished job in this log")
    done = [j for j in costs.index]
    start = min(jobs[j].start for j in done if jobs[j].start)
    end = max(jobs[j].end for j in done)
    wall = (end - start).total_seconds()
    path_s, path = critical_path({j: jobs[j] for j in done}, costs["wall_s"].to_dict())
    cpu = costs["cpu_s"].sum()
    by_rule = costs.groupby("rule").agg(jobs=("wall_s", "size"), wall_s=("wall_s", "sum"), cpu_s=("cpu_s", "sum"))
    lines = [f"run: {start:%Y-%m-%d %H:%M:%S} to {end:%H:%M:%S}, {len(done)} jobs",
             f"wall time      {wall:8.0f} s  ({wall / 3600:.2f} h)",
             f"critical path  {path_s:8.0f} s  ({path_s / 3600:.2f} h): "
             + " -> ".join(f"{jobs[j].rule}[{jobs[j].wildcards}]" for j in path),
             f"sum of jobs' wall time {costs['wall_s'].sum():8.0f} s",
             f"sum of jobs' CPU time  {cpu:8.0f} CPU-s  ({cpu / max(wall * cores, 1e-9):.0%} of {cores} cores x wall)",
             "", "| rule | jobs | wall s (sum) | CPU s (sum) |", "|---|---|---|---|"]
    lines += [f"| {rule} | {int(r.jobs)} | {r.wall_s:.0f} | {r.cpu_s:.0f} |" for rule, r in by_rule.iterrows()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("log", type=Path, help="a Snakemake run's log (.snakemake/log/*.snakemake.log)")
    p.add_argument("--root", type=Path, default=Path("."), help="the workflow's folder (benchmark paths are relative)")
    p.add_argument("--cores", type=int, default=2, help="the cores the run had (for the packing share)")
    args = p.parse_args(argv)
    print(report(args.log, args.root, args.cores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
