"""Build the workflow's DAG for many configs in one process (Snakemake's Python API), for the config tests.

    python tests/snakemake_batch.py SPEC.json RESULTS.json

SPEC is a list of {"id", "workdir", "configfiles": [...] (empty: the Snakefile's default config/config.yaml in
workdir), "execute": false}. Each case is what `snakemake -n --cores 1 [--configfile F...]` does (or, with
"execute", a real run on 1 core), in the same order of steps, about 10x faster than a new process per case
(importing Snakemake alone takes 1-2 s). RESULTS maps each id to {"ok", "stage", "error", "seconds"}, where
stage is how far it got: "configfile" (Snakemake loading the --configfile files), "workflow" (running the
Snakefile: the config checks), "dag" (building the DAG, or running jobs), "done".
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build(workdir: Path, configfiles: list[str], execute: bool) -> None:
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings

    global stage
    stage = "configfile"
    config = ConfigSettings(configfiles=[Path(p) for p in configfiles])  # Snakemake reads the files here
    with SnakemakeApi(OutputSettings(printshellcmds=True)) as api:
        stage = "workflow"
        wf = api.workflow(resource_settings=ResourceSettings(cores=1), config_settings=config,
                          snakefile=REPO / "Snakefile", workdir=workdir)
        dag = wf.dag(DAGSettings())  # includes the Snakefile: the config checks run here
        stage = "dag"
        dag.execute_workflow(executor="local" if execute else "dryrun")
    stage = "done"


def main(spec_path: str, results_path: str) -> None:
    cwd = os.getcwd()
    results = {}
    for case in json.loads(Path(spec_path).read_text()):
        t0 = time.perf_counter()
        try:
            build(Path(case["workdir"]), case["configfiles"], case.get("execute", False))
            ok, error = True, ""
        except BaseException as e:  # noqa: BLE001 - SystemExit too: record it and go on to the next case
            ok, error = False, f"{type(e).__name__}: {e}"
        finally:
            os.chdir(cwd)
        results[case["id"]] = {"ok": ok, "stage": stage, "error": error,
                               "seconds": round(time.perf_counter() - t0, 3)}
    Path(results_path).write_text(json.dumps(results, indent=1))


stage = "configfile"

if __name__ == "__main__":
    main(*sys.argv[1:])
