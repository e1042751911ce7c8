"""config/README.md, generated: the prose of config/README.md.in with every key table filled from the schemas.

    python -m vqgan.config.docs           # rewrite config/README.md
    python -m vqgan.config.docs --check   # exit 1 when it is stale (tests/test_config_docs.py runs this check)

A line `<!-- keys: PATH ... -->` in the template becomes a table of the config schema's keys under each PATH;
`<!-- keys dataset_atari: KEY ... -->` takes the keys of one dataset entry's schema (named relative to the entry).
A key whose schema node has sub-keys (`properties`) expands to one row per sub-key.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Iterator

import yaml

from vqgan.config.schema import SCHEMAS, node
from vqgan.io.files import write_text_atomic

TEMPLATE = Path("config/README.md.in")
OUTPUT = Path("config/README.md")
MARKER = re.compile(r"^<!-- keys(?: (?P<schema>[a-z_]+))?: (?P<paths>[^>]+?) -->$")
HEADER = ["| key | default | meaning |", "|---|---|---|"]


def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return text[:-3].strip() if text.endswith("...") else text


def rows(schema: str, path: str) -> Iterator[tuple[str, str, str]]:
    """(key, default, meaning) for `path` and, where it has sub-keys, for each of them instead."""
    parent, _, key = path.rpartition(".")
    sub = node(path, schema)
    if "properties" in sub:
        for child in sub["properties"]:
            yield from rows(schema, f"{path}.{child}")
        return
    if "default" in sub:
        default = f"`{_flow(sub['default'])}`"
    else:
        default = "required" if key in node(parent, schema).get("required", ()) else "—"
    meaning = " ".join(str(sub.get("description", "")).split())
    if not meaning:
        raise ValueError(f"{schema}.schema.yaml: {path} has no description; every key a user can set needs one")
    yield path, default, meaning


def table(schema: str, paths: list[str]) -> list[str]:
    return HEADER + [f"| `{k}` | {d} | {m} |" for p in paths for k, d, m in rows(schema, p)]


def generate(template: str) -> str:
    out = []
    for line in template.splitlines():
        m = MARKER.match(line.strip())
        if m:
            schema = m["schema"] or "config"
            if schema not in SCHEMAS:
                raise ValueError(f"{TEMPLATE}: unknown schema {schema!r} in {line!r}")
            out += table(schema, m["paths"].split())
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def documented_keys(template: str) -> dict[str, list[str]]:
    """{schema: [every key a table of the template shows]}, for the completeness test."""
    out: dict[str, list[str]] = {name: [] for name in SCHEMAS}
    for line in template.splitlines():
        m = MARKER.match(line.strip())
        if m:
            schema = m["schema"] or "config"
            out[schema] += [k for p in m["paths"].split() for k, _, _ in rows(schema, p)]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if config/README.md is not what the schemas give")
    p.add_argument("--template", type=Path, default=TEMPLATE)
    p.add_argument("--out", type=Path, default=OUTPUT)
    args = p.parse_args(argv)
    text = generate(args.template.read_text())
    if args.check:
        if args.out.read_text() != text:
            print(f"{args.out} is stale: run `python -m vqgan.config.docs` from the repository root", file=sys.stderr)
            return 1
        return 0
    write_text_atomic(args.out, text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
