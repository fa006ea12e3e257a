"""Plot training runs from their metrics logs: loss against wall-clock seconds.

    python -m charlm.plot checkpoints/ other_run/ --out curves.png

Each argument is a run directory (its metrics.jsonl) or a metrics.jsonl file. Needs the
optional `plot` extra: python -m pip install -e ".[plot]".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from charlm.errors import CharlmError


def read_metrics(path: str | Path) -> list[dict]:
    """The per-epoch records of a run (a run directory or its metrics.jsonl)."""
    path = Path(path)
    file = path / "metrics.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise CharlmError(f"no metrics log at {file}")
    try:
        return [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise CharlmError(f"{file} is not a charlm metrics log: {e}") from None


def plot_runs(runs: dict[str, list[dict]], out: str | Path, *, title: str = "") -> Path:
    """Draws val loss (solid) and train loss (dotted) against elapsed seconds, one colour per run."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CharlmError('plotting needs matplotlib: python -m pip install -e ".[plot]"') from None
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for i, (label, records) in enumerate(runs.items()):
        colour = f"C{i}"
        t = [r["elapsed"] for r in records]
        if any("val_loss" in r for r in records):
            ax.plot(t, [r.get("val_loss") for r in records], "-o", ms=2, color=colour, label=f"{label} (val)")
        ax.plot(t, [r["train_loss"] for r in records], ":", color=colour, label=f"{label} (train)")
    ax.set_xlabel("wall-clock seconds of training")
    ax.set_ylabel("loss (nats/char)")
    ax.set_title(title or "charlm training runs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m charlm.plot", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories or metrics.jsonl files")
    p.add_argument("--out", default="curves.png", help="PNG to write (default: %(default)s)")
    p.add_argument("--title", default="", help="plot title")
    args = p.parse_args(argv)
    try:
        runs = {Path(r).name if Path(r).is_dir() else Path(r).parent.name: read_metrics(r) for r in args.runs}
        print(plot_runs(runs, args.out, title=args.title))
    except CharlmError as e:
        print(f"charlm.plot: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
