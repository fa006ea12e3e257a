"""The experiment that picks `--preset fast`: held-out loss on Alice after a fixed CPU budget.

    python -m bench.fast_search --text ../shared/data/wonderland.txt --budget 4 [--only A B]

Each candidate trains through charlm.train (the real loop) with --val-frac 0.1 and
--max-time BUDGET; results (every epoch's elapsed seconds and val loss) go to
bench/results/fast_search.json, and a table to stdout. Run one at a time on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import jax

from charlm.config import make_run_config
from charlm.corpus import read_text
from charlm.trainer import train

COMMON = {"objective": "all", "val_frac": 0.1, "input_encoding": "embed", "clip_norm": 5.0, "lr_schedule": "cosine",
          "warmup_steps": 50, "learning_rate": 2e-3, "epochs": 1000}
CANDIDATES = {
    "A-lstm512-stateful": {"hidden": 512, "layers": 1, "dropout": 0.3, "batch_size": 32, "stateful": True},
    "B-lstm256x2-stateful": {"hidden": 256, "layers": 2, "dropout": 0.2, "batch_size": 32, "stateful": True},
    "C-lstm384-stateful": {"hidden": 384, "layers": 1, "dropout": 0.25, "batch_size": 32, "stateful": True},
    "D-gru512-stateful": {"hidden": 512, "layers": 1, "dropout": 0.3, "batch_size": 32, "stateful": True, "cell": "gru"},
    "E-lstm512-drop0.5": {"hidden": 512, "layers": 1, "dropout": 0.5, "batch_size": 32, "stateful": True},
    "F-lstm512-windows": {"hidden": 512, "layers": 1, "dropout": 0.3, "batch_size": 32},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", required=True)
    p.add_argument("--budget", type=float, default=4.0, help="minutes per candidate")
    p.add_argument("--only", nargs="*", help="candidate names (default: all)")
    p.add_argument("--out", default="bench/results/fast_search.json")
    args = p.parse_args()
    raw = read_text(args.text)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"runs": {}}
    results["machine"] = {"platform": platform.platform(), "processor": platform.processor(),
                          "jax": jax.__version__, "device": str(jax.devices()[0])}
    for name in args.only or CANDIDATES:
        cfg = make_run_config("seed-small", **{**COMMON, **CANDIDATES[name], "max_time": args.budget})
        with tempfile.TemporaryDirectory() as run_dir:
            result = train(raw, cfg, run_dir, log=lambda line, name=name: print(f"[{name}] {line}", flush=True), progress=False)
        results["runs"][name] = {"config": cfg.to_dict(), "budget_min": args.budget, "best_val_loss": result.best_loss,
                                 "curve": [(round(r["elapsed"], 1), round(r["val_loss"], 4)) for r in result.history]}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
    print(f"\n{'candidate':28s} {'best val nats/char':>18s} {'epochs':>7s}")
    for name, r in sorted(results["runs"].items(), key=lambda kv: kv[1]["best_val_loss"]):
        print(f"{name:28s} {r['best_val_loss']:18.4f} {len(r['curve']):7d}")


if __name__ == "__main__":
    main()
