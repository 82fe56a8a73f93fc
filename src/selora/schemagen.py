"""The params schema's registry-derived parts, rendered from the registered methods and data sets.

``params.schema.yaml`` is written by hand except between ``# >>> registry: <part>`` and
``# <<< registry: <part>`` lines, which this module renders from the registries: each method's
``methods.<name>`` and each data set's ``datasets.<name>`` section (from the class registered with
it, :mod:`selora.sections`), the ``setups.*.dataset`` enum and ``experiment.methods``. The
committed file holds the built-in ones (a test checks it is current; ``python -m selora.schemagen``
rewrites it). With plugins (``SELORA_PLUGINS``) the package validates against the same file
rendered with them, and so does Snakemake (:func:`snakemake_schema`).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from selora.plugins import ENV

SCHEMA_PATH = Path(__file__).parent / "schemas" / "params.schema.yaml"
WORKFLOW_SCHEMA = "workflow/schemas/params.schema.yaml"  # the symlink Snakemake validates against
REGION = re.compile(r"^( *)# >>> registry: (\S+)[^\n]*\n.*?^ *# <<< registry: \2\n", re.M | re.S)


def flow(value: Any) -> str:
    """One line of YAML flow style (``{type: integer, minimum: 1, default: 4}``)."""
    return yaml.safe_dump(value, default_flow_style=True, width=2**31, allow_unicode=True,
                          sort_keys=False).strip().removesuffix("\n...")


def _section(name: str, cls: type) -> list[str]:
    from selora.sections import section_schema

    schema = section_schema(cls)
    lines = [f"{name}:", "  type: object", "  default: {}", "  additionalProperties: false", "  properties:"]
    return lines + [f"    {key}: {flow(prop)}" for key, prop in schema["properties"].items()]


def regions() -> dict[str, list[str]]:
    """Each generated part's lines (unindented), from the registries as they are now."""
    from selora.adapters.base import method_specs
    from selora.data.registry import dataset_specs

    methods, datasets = method_specs(), dataset_specs()
    names = [m.name for m in methods]
    return {
        "methods": [line for m in methods for line in _section(m.name, m.config)],
        "datasets": [line for d in datasets for line in _section(d.name, d.source)],
        "setup-dataset": [f"dataset: {flow({'type': 'string', 'enum': [d.name for d in datasets]})}"],
        "experiment-methods": [f"items: {flow({'type': 'string', 'enum': names})}",
                               f"default: {flow(names)}"],
    }


def render(text: str) -> str:
    """``text`` (the schema file) with every registry part rendered from the registries."""
    parts = regions()
    seen = set()

    def fill(match: re.Match) -> str:
        indent, part = match[1], match[2]
        if part not in parts:
            raise ValueError(f"params schema: unknown registry part {part!r}")
        seen.add(part)
        first, last = match[0].splitlines()[0], match[0].splitlines()[-1]
        return "\n".join([first, *(indent + line for line in parts[part]), last]) + "\n"

    out = REGION.sub(fill, text)
    if missing := set(parts) - seen:
        raise ValueError(f"params schema: no registry part(s) {sorted(missing)}")
    return out


def current_schema_text() -> str:
    return render(SCHEMA_PATH.read_text(encoding="utf-8"))


def snakemake_schema() -> str:
    """The schema file Snakemake's ``validate`` reads: the committed one while it matches the
    registries, else (plugins registered more) the rendered text in a temporary file."""
    text = current_schema_text()
    if text == SCHEMA_PATH.read_text(encoding="utf-8"):
        return WORKFLOW_SCHEMA
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"selora-params-{digest}.schema.yaml"
    if not path.is_file():
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False,
                                         encoding="utf-8") as f:
            f.write(text)
        Path(f.name).replace(path)  # atomic: parallel parses never read half a file
    return str(path)


def main(argv: list[str] | None = None) -> int:
    """``python -m selora.schemagen [--check]``: rewrite the committed schema (or only compare)."""
    argv = sys.argv[1:] if argv is None else argv
    text, committed = current_schema_text(), SCHEMA_PATH.read_text(encoding="utf-8")
    if text == committed:
        return 0
    if "--check" in argv or os.environ.get(ENV):
        if os.environ.get(ENV):
            print(f"not rewriting {SCHEMA_PATH} with {ENV} set (it holds the built-in registry)",
                  file=sys.stderr)
        print(f"{SCHEMA_PATH} is out of date: run python -m selora.schemagen", file=sys.stderr)
        return 1
    SCHEMA_PATH.write_text(text, encoding="utf-8")
    print(f"rewrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
