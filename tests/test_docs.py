"""The docs name only commands that exist: every `python -m <module>` in README.md, docs/*.md and config/README.md
is a module that runs as a script, and every console command of pyproject's [project.scripts] named there answers
`--help` with exit code 0."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import pytest
from conftest import REPO

DOCS = [REPO / "README.md", REPO / "config" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TEXT = {p.relative_to(REPO).as_posix(): p.read_text() for p in DOCS}
# command -> "module:function" (read by hand: tomllib is Python 3.11+, the project supports 3.10)
SCRIPTS = dict(re.findall(r'^([\w-]+) = "([\w.]+:\w+)"$',
                          (REPO / "pyproject.toml").read_text().split("[project.scripts]")[1].split("\n[")[0], re.M))


def named_modules() -> dict[str, list[str]]:
    """module -> the docs that run it with `python -m`."""
    found: dict[str, list[str]] = {}
    for doc, text in TEXT.items():
        for m in re.findall(r"python3? -m ([A-Za-z_][\w.]*)", text):
            found.setdefault(m.rstrip("."), []).append(doc)
    return found


def named_commands() -> dict[str, list[str]]:
    """console command -> the docs that name it (whole words: `vqgan-train` is not `vqgan-train-transformer`)."""
    return {c: [d for d, t in TEXT.items() if re.search(rf"(?<![\w/-]){re.escape(c)}(?![\w-])", t)]
            for c in SCRIPTS}


def test_the_docs_are_searched():
    # guards the regexes against a change of wording that would make every check below vacuous
    assert len(SCRIPTS) >= 9 and SCRIPTS["vqgan-train"] == "vqgan.train.vqgan:main"
    assert {"vqgan.train.vqgan", "atari_collect"} <= set(named_modules())
    assert {"atari-collect", "vqgan-train", "vqgan-fid"} <= {c for c, docs in named_commands().items() if docs}


@pytest.mark.parametrize("module", sorted(named_modules()))
def test_every_python_m_module_in_the_docs_exists_and_runs_as_a_script(module):
    docs = named_modules()[module]
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"{docs} run `python -m {module}`, which does not exist"
    if module.split(".")[0] in ("vqgan", "atari_collect"):
        # a package runs through its __main__.py; a module needs its `if __name__ == "__main__":` block
        main = importlib.util.find_spec(f"{module}.__main__") if spec.submodule_search_locations else spec
        source = "" if main is None else open(main.origin).read()
        assert main is not None and (main.name.endswith("__main__") or '__name__ == "__main__"' in source), (
            f"{docs} run `python -m {module}`, which has no __main__ to run")


def test_every_console_command_in_the_docs_answers_help():
    # one interpreter for all (each would import torch again): every entry point's function, as pip's console
    # script calls it, with sys.argv = [command, "--help"]
    named = sorted(c for c, docs in named_commands().items() if docs)
    script = (
        "import contextlib, importlib, io, json, sys\n"
        "codes = {}\n"
        "for name, target in json.loads(sys.argv[1]).items():\n"
        "    module, function = target.split(':')\n"
        "    sys.argv = [name, '--help']\n"
        "    out = io.StringIO()\n"
        "    try:\n"
        "        with contextlib.redirect_stdout(out):\n"
        "            code = getattr(importlib.import_module(module), function)()\n"
        "    except SystemExit as e:\n"
        "        code = e.code\n"
        "    codes[name] = [code or 0, out.getvalue()[:200]]\n"
        "print(json.dumps(codes))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, json.dumps({c: SCRIPTS[c] for c in named})],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    bad = {c: code for c, (code, _) in codes.items() if code != 0}
    assert not bad, f"--help did not exit 0: {bad}"
    assert all("usage:" in text for _, text in codes.values()), {c: t for c, (_, t) in codes.items()}
