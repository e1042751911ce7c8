# Helpers shared by every .smk file in workflow/rules/: the config check's wiring, per-dataset config sections,
# path builders. The checks themselves live in vqgan/config/ (a Python module with its own unit tests); the
# Snakefile calls them while the DAG is built, before any job runs, and each failure is one line naming the key.
import atexit
import json
import sys

from atari_collect.config import DATASET_RULES, parse_config
from vqgan import hardware, memory
from vqgan.config.experiment import DEFAULT_COCO_ROOT, check_experiment
from vqgan.config.failures import failed_jobs, what_next
from vqgan.config.files import ConfigError, check_config_files, check_not_overlays_alone


def check_files(paths, given=False):
    """Read every config file strictly: a WorkflowError with file:line for the first problem; files `given` with
    --configfile must hold an experiment (`datasets:`), not an overlay alone."""
    try:
        check_config_files(paths)
        if given:
            check_not_overlays_alone(paths, config)
    except ConfigError as e:
        raise WorkflowError(str(e)) from None


def check_config(cfg):
    """Validate the config in place (defaults filled) and return the checked Experiment; a WorkflowError with
    one line naming the key otherwise. The collector's own rules check the Atari entries.
    """
    try:
        return check_experiment(cfg, {"atari": DATASET_RULES})
    except ConfigError as e:
        raise WorkflowError(str(e)) from None


def print_what_next(snakemake_log):
    """After a failed run, say what failed and what to type next (vqgan/config/failures.py) as the very last lines:
    at exit, below Snakemake's own closing lines (log path, elapsed time, "At least one job did not complete").
    """
    atari = [f"results/fid/{ds}/{v}.json" for ds in ATARI_DATASETS for v in VARIANTS]

    def show():
        lines = what_next(
            failed_jobs(snakemake_log), sys.argv, atari, config["weights_dir"]
        )
        if lines:
            print("\n".join(lines), file=sys.stderr, flush=True)

    atexit.register(show)


def _names(names):
    # a regex matching exactly these dataset names (never the empty string)
    return "|".join(names) if names else "(?!x)x"


def dataset_json(ds):
    """The dataset entry as the JSON its collection CLI takes (no per-stage overrides)."""
    return json.dumps(EXPERIMENT.collection_entry(ds), sort_keys=True)


def eval_sets_json(ds):
    """The dataset's external evaluation sets as JSON (a tracked param of eval_vqgan; `{}` for none)."""
    return json.dumps(DATASETS[ds].get("eval_sets") or {}, sort_keys=True)


def eval_set_folders(wildcards):
    return [s["path"] for s in (DATASETS[wildcards.ds].get("eval_sets") or {}).values()]


def section_json(ds, variant, section, keys=None):
    """A config section with the dataset's and the variant's overrides applied, as JSON (a tracked param: changes
    rerun the rule); `keys` limits it to the sub-sections a rule reads."""
    return EXPERIMENT.section_json(ds, variant, section, keys)


def sample_seeds(ds, variant):
    return EXPERIMENT.section(ds, variant, "sample")["seeds"]


def sample_json(wildcards):
    # one seed per job: the CLI takes `seed`, the config lists `seeds`
    data = EXPERIMENT.section(wildcards.ds, wildcards.variant, "sample")
    keep = {k: v for k, v in data.items() if k != "seeds"}
    return json.dumps({**keep, "seed": int(wildcards.seed)}, sort_keys=True)


def sample_folders(wildcards):
    """The variant's sample folders, one per seed (the fid job scores each and reports mean and std)."""
    return [
        f"results/samples/{wildcards.ds}/{wildcards.variant}/seed{s}"
        for s in sample_seeds(wildcards.ds, wildcards.variant)
    ]


def runs():
    """Every (dataset, variant) pair: the unit each stage after the data runs for."""
    return [(ds, v) for ds in DATASETS for v in VARIANTS]


def per_run(pattern):
    """`pattern` with {ds} and {variant} filled for every run."""
    return [pattern.format(ds=ds, variant=v) for ds, v in runs()]


# -- COCO source --------------------------------------------------------------------------------------------


def coco_root():
    return config["coco"]["root"] or DEFAULT_COCO_ROOT


def coco_source(wildcards):
    # a local COCO root is used as it is; otherwise download_coco provides one
    if config["coco"]["root"]:
        return {}
    return {"download": rules.download_coco.output.summary}


def lpips_weights_when(needed):
    """An input function: the LPIPS weights (the fetch_weights rule's outputs) for the jobs whose variant's `vqgan`
    section needs them, nothing for the others."""

    def inputs(wildcards):
        vq = EXPERIMENT.section(wildcards.ds, wildcards.variant, "vqgan")
        return list(rules.fetch_weights.output) if needed(vq) else []

    return inputs


# training needs them only when the perceptual loss is on
perceptual_weights = lpips_weights_when(lambda vq: vq["loss"]["perceptual_weight"] > 0)
# evaluation whenever it scores LPIPS: an input, not a lookup at run time, or a row's LPIPS would depend on whether
# another job had fetched the weights first
eval_lpips_weights = lpips_weights_when(lambda vq: vq["eval"]["lpips"])


def benchmark_files(wildcards):
    """Every compute job's benchmark TSV (an output of that job): benchmarks/<rule>/<ds>[/<variant>[/seed<n>]].tsv."""
    data = [
        f"benchmarks/{'prepare_coco' if ds in COCO_DATASETS else 'collect_atari'}/{ds}.tsv"
        for ds in DATASETS
    ]
    stages = ["train_vqgan", "eval_vqgan", "encode", "train_transformer", "fid"]
    per_variant = [f"benchmarks/{r}/{ds}/{v}.tsv" for r in stages for ds, v in runs()]
    per_seed = [
        f"benchmarks/sample/{ds}/{v}/seed{s}.tsv"
        for ds, v in runs()
        for s in sample_seeds(ds, v)
    ]
    # sorted: the order `find benchmarks | sort` gave the figure
    return sorted(data + per_variant + per_seed)


# -- targets ------------------------------------------------------------------------------------------------


def explored_datasets():
    """Atari datasets where some game is collected by Go-Explore: the collector draws their coverage.png."""

    def explores(cfg):
        return any(
            cfg.policy_for(label).name == "go_explore"
            for label in range(len(cfg.games))
        )

    return [
        ds
        for ds in ATARI_DATASETS
        if explores(parse_config(EXPERIMENT.collection_entry(ds)))
    ]


def all_targets():
    """The table, and the figures the HTML report shows."""
    return [
        "results/fid_table.csv",
        "results/plots/benchmarks.png",
        *expand("results/plots/data_{ds}.png", ds=DATASETS),
        *expand("results/plots/coverage_{ds}.png", ds=explored_datasets()),
        *per_run("results/plots/vqgan_{ds}_{variant}_curves.png"),
        *per_run("results/plots/transformer_{ds}_{variant}_curves.png"),
        *per_run("results/vqgan/{ds}/{variant}/recon.png"),
    ]


# -- jobs ---------------------------------------------------------------------------------------------------

# The software environment of every rule (`--use-conda`); the README's virtual environment works as well.
ENV = "../envs/pipeline.yaml"


def on_own_gpus(command):
    """Rules whose program may use a GPU run it through vqgan.gpus: with gpu=0 it sees no GPU (CPU jobs side by
    side never land on cuda:0), with gpu=N it gets N GPUs that no other job holds, waiting while too few are free.
    """
    return f"python -m vqgan.gpus --count {{resources.gpu}} -- {command}"


# -- the machine --------------------------------------------------------------------------------------------


def plan_jobs():
    """The machine, detected once while the DAG is built (vqgan.hardware; VQGAN_HARDWARE overrides it) and
    printed as one line by the main process: -> (the GPU rules' default gpu, the training rules' threads).
    --set-resources and --set-threads (and the cluster profile's) win over both."""
    try:
        hw = hardware.detect()
    except hardware.HardwareError as e:
        raise WorkflowError(str(e)) from None
    gpu, threads = hardware.job_defaults(hw)
    cap = cap_gpu_jobs(hw)
    check_gpu_requests(cap)
    check_gpu_memory(hw, gpu)
    # not again in the jobs Snakemake starts itself (a SLURM job runs Snakemake again)
    if workflow.is_main_process:
        cap = f" (at most {cap} GPU jobs at once)" if cap else ""
        print(
            f"{hw.line()}; jobs: gpu={gpu}{cap}, {threads} thread{'s' * (threads > 1)} per training job",
            file=sys.stderr,
        )
    return gpu, threads


def cap_gpu_jobs(hw):
    """Never more GPU jobs at once than GPUs: Snakemake's global `gpu` resource -> the cap, or None. A value given
    with --resources stays. Not when the jobs go to a cluster (--jobs with a remote executor sets Snakemake's
    `_nodes`): the GPUs of the submitting host mean nothing there, and the cap would bind the whole cluster.
    """
    given = workflow.global_resources
    if "gpu" in given:
        return given["gpu"].value
    if not hw.gpus or given["_nodes"].value is not None or not workflow.is_main_process:
        return None
    workflow.register_resource("gpu", len(hw.gpus))
    return len(hw.gpus)


def check_gpu_requests(cap):
    """A --set-resources <rule>:gpu=N above the cap, in one line (Snakemake's own message would blame pipes)."""
    if not cap:
        return
    for rule, res in workflow.resource_settings.overwrite_resources.items():
        n = res["gpu"].value if "gpu" in res else None
        if isinstance(n, int) and n > cap:
            raise WorkflowError(
                f"--set-resources {rule}:gpu={n}: at most {cap} GPU(s) here (the GPUs found, or --resources "
                f"gpu=...); give {rule} gpu={cap} or less (0: the CPU)"
            )


def _resource(rule, name, default):
    # a --set-resources/profile value when it is a plain number (an expression over `attempt` is left unchecked)
    res = workflow.resource_settings.overwrite_resources.get(rule, {})
    value = res[name].value if name in res else default
    return value if isinstance(value, (int, float)) else default


def check_gpu_memory(hw, gpu):
    """Every training job fits the GPU memory its rule declares (the gpu_mem_gib resource, e.g. profiles/slurm;
    locally the smallest GPU found): vqgan.memory's formula, one line naming the key otherwise. A resource, so
    changing it never reruns a job."""
    local = min((g.memory_mib for g in hw.gpus), default=0) / 1024
    rules = ("train_vqgan", "train_transformer")
    gpus = {r: _resource(r, "gpu", gpu) for r in rules}
    mem = {r: _resource(r, "gpu_mem_gib", local) for r in rules}
    try:
        memory.check_fits(EXPERIMENT, gpus, mem)
    except ValueError as e:
        raise WorkflowError(str(e)) from None
