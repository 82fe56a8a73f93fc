"""environment.yml, generated from requirements.txt (the one pinned list):

    python -m selora.envfile            # rewrites environment.yml beside requirements.txt

``snakemake --sdm conda`` copies the env file alone into ``.snakemake/conda/``, so it must name no
file beside it (no ``-r requirements.txt``, no ``-e .``): the pins are written out here, and the
package itself is not in the env (the rules run the checkout's source there; see
workflow/rules/common.smk). tests/test_workflow.py keeps the two files equal.
"""

from __future__ import annotations

import sys
from pathlib import Path

PYTHON = "3.11"


def pins(requirements: str) -> list[str]:
    """The requirement lines of a requirements file, without comments or blank lines."""
    lines = (line.split("#", 1)[0].strip() for line in requirements.splitlines())
    return [line for line in lines if line]


def render(requirements: str) -> str:
    body = "\n".join(f"      - {p}" for p in pins(requirements))
    return (
        "# GENERATED from requirements.txt by `python -m selora.envfile`: do not edit.\n"
        "# Conda environment for clusters: `conda env create -f environment.yml`, then install the\n"
        "# package into it with `pip install --no-deps -e .`. Snakemake's per-rule envs\n"
        "# (--sdm conda) use this file as it is: they run the checkout's source (common.smk).\n"
        "name: selora\n"
        "channels:\n"
        "  - conda-forge\n"
        "dependencies:\n"
        f"  - python={PYTHON}\n"
        "  - pip\n"
        "  - pip:\n"
        f"{body}\n"
    )


def main(root: Path = Path(".")) -> int:
    from selora.io import write_text

    write_text(root / "environment.yml", render((root / "requirements.txt").read_text()))
    print(f"wrote {root / 'environment.yml'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
