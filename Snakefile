# The workflow lives in workflow/Snakefile (Snakemake workflow catalog convention).
include: "workflow/Snakefile"


# Snakemake 9 picks no default target from an included file, so the default target is named here.
rule default:
    default_target: True
    input:
        rules.all.input,
