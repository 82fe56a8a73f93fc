"""The run's logs: kept in memory, saved inside every checkpoint, written as CSV atomically.

Keeping the rows in the checkpoint is what makes a killed-and-resumed run end with byte-identical
log files: the resumed process restores the rows up to the checkpoint and appends the same rows
the uninterrupted run would. Wall-clock and memory readings are not deterministic, so they live
in ``memory.csv`` and ``summary.json`` only, never in the files compared for bit-identity.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selora.io import write_text

COLUMNS: dict[str, tuple[str, ...]] = {
    "steps": ("step", "epoch", "loss", "lr"),
    "validation": ("epoch", "step", "val_loss", "is_best"),
    "memory": ("step", "device", "peak_mb"),
    "ranks": ("step", "part", "module", "rank", "fi_ratio", "expanded"),
}
DETERMINISTIC = ("steps", "validation", "ranks", "parameters")


@dataclass
class RunLogs:
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {k: [] for k in COLUMNS})

    def add(self, name: str, **row: Any) -> None:
        self.rows[name].append(row)

    def extend(self, name: str, rows: list[dict[str, Any]]) -> None:
        self.rows[name].extend(rows)

    def state(self) -> dict[str, list[dict[str, Any]]]:
        return {k: [dict(r) for r in v] for k, v in self.rows.items()}

    @classmethod
    def from_state(cls, state: dict[str, list[dict[str, Any]]]) -> RunLogs:
        logs = cls()
        for k, v in state.items():
            logs.rows[k] = [dict(r) for r in v]
        return logs

    def write(self, folder: str | Path) -> None:
        for name, columns in COLUMNS.items():
            write_csv(Path(folder) / f"{name}.csv", self.rows[name], columns)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_csv(dest: str | Path, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    write_text(dest, buf.getvalue())
