"""The experiment configuration as one tested module: read, validate, merge, check.

- `files`: config files read strictly (file:line for syntax errors, duplicate keys, YTE templates).
- `schema`: the JSON schemas in `schemas/`, the one source of every default and description; validation that
  fills defaults and names the bad key; `defaults(section)` for commands run by hand.
- `experiment`: the whole experiment checked before any job (per-dataset and per-variant merges, cross-key
  checks, the file system), and the merged section every job gets.
- `docs`: config/README.md generated from the schemas (`python -m vqgan.config.docs`).

`files` and `schema` import nothing of the project (every command may use them); `experiment` calls the data and
eval code's own checks and builds every stage's own config objects (`build`, the loops', the sampler's and
evaluation's: one copy of each rule, run for every dataset and variant), and the Atari rules are passed in by the
caller, so that vqgan needs nothing of atari_collect.
"""
