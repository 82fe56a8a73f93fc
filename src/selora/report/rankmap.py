"""Final rank maps as the paper draws them (Figures 3–6): layers × weight roles.

A module name (``text_model.encoder.layers.3.self_attn.q_proj``,
``down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k``, ...) is split into a *group*
(``attention`` for transformer layers, ``other`` for e.g. the ResNet time-embedding projections),
a *layer* (x axis, ordered input → output: down blocks, mid block, up blocks) and a *role* (y axis:
q/k/v/out/fc1/fc2 in the text encoder, attn1 q … attn2 out, ff 1/2 in the U-Net).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

_TEXT = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn\.(q|k|v|out)_proj|mlp\.(fc1|fc2))$")
_STAGE = r"(down_blocks\.(\d+)|mid_block|up_blocks\.(\d+))"
_UNET_ATTN = re.compile(
    _STAGE + r"\.attentions\.(\d+)\.(?:transformer_blocks\.(\d+)\.(attn1|attn2|ff)\.(.+)|(proj_in|proj_out))$"
)
_UNET_RES = re.compile(_STAGE + r"\.resnets\.(\d+)\.(.+)$")
_ROLE = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "out", "net.0.proj": "1", "net.2": "2"}

TEXT_ROLES = ("q", "k", "v", "out", "fc1", "fc2")
UNET_ROLES = (
    *(f"{a} {r}" for a in ("attn1", "attn2") for r in ("q", "k", "v", "out")),
    "ff 1",
    "ff 2",
    "proj_in",
    "proj_out",
)


@dataclass(frozen=True, order=True)
class Slot:
    group: str  # "attention" | "other"
    order: tuple  # sort key of the layer, input → output
    layer: str  # x-axis label
    role: str  # y-axis label


def _stage(m: re.Match) -> tuple[tuple, str]:
    if m.group(2) is not None:
        return (0, int(m.group(2))), f"down{m.group(2)}"
    if m.group(3) is not None:
        return (2, int(m.group(3))), f"up{m.group(3)}"
    return (1, 0), "mid"


def classify(module: str) -> Slot:
    """Where a module goes in the heatmap."""
    m = _TEXT.search(module)
    if m:
        role = m.group(2) or m.group(3)
        return Slot("attention", (int(m.group(1)),), m.group(1), role)
    m = _UNET_ATTN.search(module)
    if m:
        key, name = _stage(m)
        attn, block = int(m.group(4)), int(m.group(5) or 0)
        label = f"{name}.{attn}" + (f".t{block}" if block else "")
        if m.group(8):
            role = m.group(8)
        else:
            sub = _ROLE.get(m.group(7), m.group(7))
            role = f"{m.group(6)} {sub}"
        return Slot("attention", (*key, attn, block), label, role)
    m = _UNET_RES.search(module)
    if m:
        key, name = _stage(m)
        return Slot("other", (*key, int(m.group(4))), f"{name}.r{m.group(4)}", m.group(5))
    head, _, tail = module.rpartition(".")
    return Slot("other", (9, head), head or tail, tail)


def final_ranks(ranks: pd.DataFrame) -> pd.DataFrame:
    """The rank of every (part, module) at its last logged step: columns part, module, rank."""
    last = ranks.sort_values("step").groupby(["part", "module"], as_index=False).last()
    return last[["part", "module", "rank"]]


def rank_matrix(final: pd.DataFrame, part: str, group: str = "attention") -> pd.DataFrame:
    """roles × layers of one part's final ranks (NaN where no such module); columns ordered
    input → output, rows in the paper's order."""
    rows = []
    for module, rank in zip(
        final.loc[final["part"] == part, "module"], final.loc[final["part"] == part, "rank"], strict=True
    ):
        slot = classify(module)
        if slot.group == group:
            rows.append((slot.order, slot.layer, slot.role, float(rank)))
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows, columns=["order", "layer", "role", "rank"])
    layers = [lay for _, lay in sorted({(o, lay) for o, lay in zip(df["order"], df["layer"], strict=True)})]
    known = TEXT_ROLES + UNET_ROLES
    roles = sorted(df["role"].unique(), key=lambda r: (known.index(r) if r in known else len(known), r))
    mat = df.pivot_table(index="role", columns="layer", values="rank", aggfunc="mean")
    return mat.reindex(index=roles, columns=layers)
