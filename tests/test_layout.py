"""The architecture, checked: who may import whom, no import circles, and one source of config defaults.

Dependency direction (docs/design.md): stage CLIs -> train / eval / data -> models and io. Models import nothing
of the project; data knows no model; the Atari collector knows only the dataset contract (and the generic
progress bar, vqgan.io.progress, which imports nothing of the project).
"""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import yaml
from conftest import REPO

PACKAGES = ("vqgan", "atari_collect")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_imports(path: Path) -> set[str]:
    """Every project module `path` imports, at module level or inside functions, relative imports resolved."""
    tree = ast.parse(path.read_text())
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from vqgan.io import files` imports the module vqgan.io.files
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in PACKAGES)
    return found


MODULES = {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def resolve(name: str) -> str | None:
    """The project module an imported name refers to (a module, or a module's attribute)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


GRAPH = {m: {r for n in project_imports(p) if (r := resolve(n)) and r != m and not MODULES[r].name == "__init__.py"}
         for m, p in MODULES.items()}


def imports_of(prefix: str) -> dict[str, set[str]]:
    return {m: deps for m, deps in GRAPH.items() if m == prefix or m.startswith(prefix + ".")}


def test_the_import_graph_sees_the_packages():
    # guards the tests below against passing on an empty graph
    assert "vqgan.models.vqgan" in GRAPH and "atari_collect.collect" in GRAPH
    assert "vqgan.models.quantize" in GRAPH["vqgan.models.vqgan"]
    assert "vqgan.data.dataset" in GRAPH["atari_collect.dataset"]


def test_models_import_nothing_of_the_rest():
    bad = {m: sorted(d for d in deps if not d.startswith("vqgan.models")) for m, deps in imports_of("vqgan.models").items()}
    assert not {m: d for m, d in bad.items() if d}, "vqgan/models/ must not import training, data, eval, io or CLI code"


def test_data_knows_no_model_and_io_no_stage():
    for prefix, forbidden in (("vqgan.data", ("vqgan.models", "vqgan.train", "vqgan.eval")),
                              ("vqgan.io", ("vqgan.train", "vqgan.eval", "vqgan.data"))):
        bad = {m: sorted(d for d in deps if d.startswith(forbidden)) for m, deps in imports_of(prefix).items()}
        assert not {m: d for m, d in bad.items() if d}, f"{prefix} imports {forbidden}"


ATARI_MAY_IMPORT = {"vqgan.data.dataset", "vqgan.io.progress"}  # the dataset contract; log-friendly progress bars


def test_atari_collect_knows_only_the_dataset_contract():
    bad = {m: sorted(d for d in deps if d.startswith("vqgan") and d not in ATARI_MAY_IMPORT)
           for m, deps in imports_of("atari_collect").items()}
    assert not {m: d for m, d in bad.items() if d}


def test_what_atari_collect_may_import_stays_free_of_the_project():
    # the exception for the progress bar holds only while it pulls in nothing else of vqgan
    assert not {d for d in GRAPH["vqgan.io.progress"] if d.startswith(PACKAGES)}, GRAPH["vqgan.io.progress"]
    assert "vqgan.io.progress" in GRAPH["atari_collect.collect"]  # guards the rule above against a stale name


def test_no_import_circles():
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for d in sorted(GRAPH.get(m, ())):
            if state.get(d) == 1:
                return path + [m, d]
            if d not in state and (cycle := visit(d, path + [m])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state:
            cycle = visit(m, [])
            assert cycle is None, "import circle: " + " -> ".join(cycle[cycle.index(cycle[-1]):])


def test_no_bench_script_shadows_a_package():
    assert not {p.stem for p in (REPO / "bench").glob("*.py")} & set(PACKAGES)


# --- one source of defaults: the schema ---------------------------------------------------------------------


def schema_defaults(*path: str, schema: str = "config.schema.yaml") -> dict:
    node = yaml.safe_load((REPO / "workflow" / "schemas" / schema).read_text())
    for key in path:
        node = node["properties"][key]
    # nested sections (default {}) are compared on their own
    return {k: v["default"] for k, v in node["properties"].items() if "default" in v and v["default"] != {}}


def code_defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def section_cases():
    from atari_collect.config import AtariConfig, PolicyConfig
    from vqgan.eval.fid import FIDConfig
    from vqgan.eval.recon import EvalConfig
    from vqgan.models.gpt import GPTConfig
    from vqgan.models.losses import LossConfig
    from vqgan.models.vqgan import VQGANConfig
    from vqgan.sample import SampleConfig
    from vqgan.train.transformer import TrainConfig as TransformerTrain
    from vqgan.train.vqgan import TrainConfig as VQGANTrain

    return [
        (("vqgan", "model"), VQGANConfig, {}),
        (("vqgan", "quantizer"), VQGANConfig, {"kind": "quantizer"}),
        (("vqgan", "loss"), LossConfig, {}),
        (("vqgan", "train"), VQGANTrain, {}),
        (("vqgan", "eval"), EvalConfig, {}),
        (("transformer", "model"), GPTConfig, {}),
        (("transformer", "train"), TransformerTrain, {}),
        (("sample",), SampleConfig, {}),
        (("fid",), FIDConfig, {}),
        ((), AtariConfig, {"schema": "dataset_atari.schema.yaml"}),
        (("policy",), PolicyConfig, {"schema": "dataset_atari.schema.yaml"}),
    ]


@pytest.mark.parametrize("case", range(11))
def test_code_defaults_match_the_schema(case):
    path, cls, rename = section_cases()[case]
    rename = dict(rename)
    schema = rename.pop("schema", "config.schema.yaml")
    expected = schema_defaults(*path, schema=schema)
    assert expected, f"no defaults found under {path} in {schema}"
    code = code_defaults(cls)
    drift = {k: (v, _norm(code[rename.get(k, k)])) for k, v in expected.items()
             if rename.get(k, k) in code and _norm(code[rename.get(k, k)]) != v}
    assert not drift, f"{cls.__name__} defaults differ from {schema} {'.'.join(path)} (schema, code): {drift}"


def test_readme_defaults_match_the_schema():
    """config/README.md's default column says what the schema says."""
    text = (REPO / "config" / "README.md").read_text()
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| `")]
    documented = {r[1].strip().strip("`"): r[2].strip() for r in rows if len(r) > 3}
    checked = 0
    for section in (("vqgan", "model"), ("vqgan", "quantizer"), ("vqgan", "loss"), ("vqgan", "train"),
                    ("vqgan", "eval"), ("transformer", "model"), ("transformer", "train"), ("sample",), ("fid",)):
        for key, value in schema_defaults(*section).items():
            name = ".".join(section + (key,))
            if name not in documented or not documented[name].startswith("`"):
                continue
            raw = documented[name].strip("`")
            shown = raw if isinstance(value, str) else yaml.safe_load(raw)  # `no` is a string here, not False
            assert shown == value, f"config/README.md says {name} defaults to {shown!r}, the schema {value!r}"
            checked += 1
    assert checked > 40, f"only {checked} documented defaults were compared; has the README's table changed?"


# --- functions that read as steps ---------------------------------------------------------------------------

MAX_FUNCTION_LINES = 80
LONG_BECAUSE = "Long because"  # a function over the limit says why in its docstring, after these words


def long_functions(tree: ast.AST, module: str) -> dict[str, int]:
    """`module:qualified.name` -> lines (docstring included) of every function or method in `tree` over the limit
    whose docstring does not say why it is long."""
    found = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    lines = child.end_lineno - child.lineno + 1
                    if lines > MAX_FUNCTION_LINES and LONG_BECAUSE not in (ast.get_docstring(child) or ""):
                        found[f"{module}:{name}"] = lines
                visit(child, name + ".")

    visit(tree, "")
    return found


def test_the_function_length_check_flags_long_functions_only():
    # guards the test below against passing on nothing: methods and nested functions are seen, 80 lines pass,
    # 81 do not unless the docstring says why
    def body(n: int, indent: str) -> str:
        return f"{indent}x = 1\n" * n

    source = ("class C:\n    def ok(self):\n" + body(MAX_FUNCTION_LINES - 1, " " * 8)
              + "    def long(self):\n" + body(MAX_FUNCTION_LINES, " " * 8)
              + "def outer():\n    def inner():\n" + body(MAX_FUNCTION_LINES, " " * 8) + "    return inner\n"
              + 'def excused():\n    """Long because it must be."""\n' + body(MAX_FUNCTION_LINES, " " * 4))
    assert long_functions(ast.parse(source), "m") == {"m:C.long": MAX_FUNCTION_LINES + 1,
                                                      "m:outer": MAX_FUNCTION_LINES + 3,
                                                      "m:outer.inner": MAX_FUNCTION_LINES + 1}
    assert "vqgan.train.loop" in MODULES and "atari_collect.explore" in MODULES


def test_functions_are_at_most_80_lines_unless_they_say_why():
    long = {k: v for m, p in MODULES.items() for k, v in long_functions(ast.parse(p.read_text()), m).items()}
    assert not long, (f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps, or say "
                      f"'{LONG_BECAUSE} ...' in the docstring): {long}")
