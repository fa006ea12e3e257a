"""What PyTorch's CPU LSTM training step does, op by op: GEMM-type calls, their shapes, top ops.

    python -m bench.torch_profile                                   # seed-big and dense-small
    python -m bench.torch_profile --setup seed-big --no-mkldnn      # aten's own LSTM, for contrast
    python -m bench.torch_profile --onednn-verbose > verbose.txt    # oneDNN's primitive log, one step

Runs the PyTorch peer's own step (`bench.peers.torch_peer.make_step`: nn.LSTM, Adam lr 1e-3,
cross-entropy, the scaled one-feature input, the benchmark's fixed batches), runs a few warm-up
steps, then profiles `--steps` more with torch.profiler (CPU activity, record_shapes=True). Each
step's forward, backward and optimizer are marked with record_function so every op can be
attributed to its phase. Prints, per step: every GEMM-type op (aten::mm/addmm/bmm/matmul/linear
and the oneDNN/aten RNN kernels) with its input shapes and counts per phase, the op count per
phase, and the share of self CPU time of the top ops. Counts and shapes are exact; times are
indicative only on a busy machine. `--json FILE` also writes the tables as JSON.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from bench import perfkit
from bench.peers import torch_peer

WARMUP = 3
PHASES = ("forward", "backward", "optimizer")
# Ops that do matrix products. The wrappers (matmul, linear) dispatch to a leaf (mm, addmm, ...);
# both are listed, and the leaf totals count each product once.
GEMM_LEAVES = ("aten::mm", "aten::addmm", "aten::bmm", "aten::addbmm", "aten::baddbmm",
               "aten::mkldnn_rnn_layer", "aten::mkldnn_rnn_layer_backward", "aten::mkldnn_rnn",
               "aten::_thnn_fused_lstm_cell", "aten::_thnn_fused_lstm_cell_backward",
               "aten::_thnn_fused_lstm_cell_backward_impl", "aten::mkldnn_linear", "aten::_mkldnn_rnn_layer")
GEMM_WRAPPERS = ("aten::matmul", "aten::linear", "aten::lstm", "aten::lstm_cell", "aten::rnn_tanh")


def _phase(event) -> str:
    e = event
    while e is not None:
        if e.name.startswith("phase:"):
            return e.name[len("phase:"):]
        e = e.cpu_parent
    return "other"


def _ancestors(event) -> list[str]:
    out, e = [], event.cpu_parent
    while e is not None:
        out.append(e.name)
        e = e.cpu_parent
    return out


def analyse(prof, steps: int, top: int) -> dict:
    events = list(prof.events())  # CPU activity only
    gemm = collections.Counter()      # (phase, name, shapes, nearest wrapper) -> calls
    ops_per_phase = collections.Counter()
    self_us = collections.Counter()
    calls = collections.Counter()
    for e in events:
        if e.name.startswith(("phase:", "ProfilerStep")):
            continue
        phase = _phase(e)
        ops_per_phase[phase] += 1
        self_us[e.name] += e.self_cpu_time_total
        calls[e.name] += 1
        if e.name in GEMM_LEAVES or e.name in GEMM_WRAPPERS:
            anc = _ancestors(e)
            parent = next((a for a in anc if a in GEMM_WRAPPERS or a in GEMM_LEAVES
                           or a.startswith("autograd::engine::evaluate_function:")), "-")
            parent = parent.replace("autograd::engine::evaluate_function: ", "")
            shapes = "; ".join(str(list(s)) for s in e.input_shapes if s) if e.input_shapes else ""
            gemm[(phase, e.name, shapes, parent)] += 1
    total_self = sum(self_us.values()) or 1
    rows = [{"phase": p, "op": n, "input_shapes": s, "under": par, "calls_per_step": c / steps,
             "leaf": n in GEMM_LEAVES}
            for (p, n, s, par), c in sorted(gemm.items(), key=lambda kv: (PHASES.index(kv[0][0])
                                                                         if kv[0][0] in PHASES else 9, kv[0][1]))]
    leaf_per_phase = collections.Counter()
    for r in rows:
        if r["leaf"]:
            leaf_per_phase[r["phase"]] += r["calls_per_step"]
    top_ops = [{"op": n, "self_share": us / total_self, "self_ms_per_step": us / 1000 / steps,
                "calls_per_step": calls[n] / steps} for n, us in self_us.most_common(top)]
    return {"gemm": rows, "gemm_leaf_calls_per_step": dict(leaf_per_phase),
            "ops_per_step": {p: c / steps for p, c in ops_per_phase.items()},
            "self_ms_per_step_total": total_self / 1000 / steps, "top_ops": top_ops}


def print_report(name: str, mkldnn: bool, res: dict) -> None:
    print(f"\n=== {name} (mkldnn {'on' if mkldnn else 'off'}) ===")
    print("GEMM-type ops per step (leaf = counted once; wrappers listed for where they come from):")
    print(f"  {'phase':9} {'op':38} {'calls':>7}  {'under':28} input shapes")
    for r in res["gemm"]:
        mark = "" if r["leaf"] else " (wrapper)"
        print(f"  {r['phase']:9} {r['op'] + mark:38} {r['calls_per_step']:7.1f}  {r['under'][:28]:28} {r['input_shapes']}")
    print("leaf GEMM-type calls per step by phase:", {k: round(v, 1) for k, v in res["gemm_leaf_calls_per_step"].items()})
    print("profiled ops per step by phase:", {k: round(v, 1) for k, v in res["ops_per_step"].items()})
    print(f"self CPU per step (all ops, indicative): {res['self_ms_per_step_total']:.1f} ms; top ops by self CPU:")
    for t in res["top_ops"]:
        print(f"  {t['self_share'] * 100:5.1f} %  {t['self_ms_per_step']:8.2f} ms  {t['calls_per_step']:7.1f} calls  {t['op']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setup", nargs="+", choices=sorted(perfkit.SETUPS), default=["seed-big", "dense-small"])
    p.add_argument("--text", default=perfkit.DEFAULT_TEXT)
    p.add_argument("--steps", type=int, default=3, help="profiled steps (after the warm-up)")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--no-mkldnn", action="store_true", help="disable oneDNN (torch.backends.mkldnn)")
    p.add_argument("--onednn-verbose", action="store_true",
                   help="instead of profiling, run one step with oneDNN's verbose log on stdout")
    p.add_argument("--json", help="also write the tables here")
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)  # as the peer does
    tokens, vocab_size = perfkit.load_tokens(args.text)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, mkldnn available "
          f"{torch.backends.mkldnn.is_available()}, mkldnn enabled {not args.no_mkldnn}, vocab {vocab_size}")
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "mkldnn": not args.no_mkldnn,
           "setups": {}}
    with torch.backends.mkldnn.flags(enabled=not args.no_mkldnn):
        for name in args.setup:
            setup = perfkit.SETUPS[name]
            print(f"\n{name}: {setup}", flush=True)
            batches = perfkit.fixed_batches(tokens, setup, WARMUP + args.steps)
            step = torch_peer.make_step(setup, vocab_size, phase=lambda name: record_function(f"phase:{name}"))
            for b in batches[:WARMUP]:
                step(b)
            if args.onednn_verbose:
                sys.stdout.flush()
                with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                    step(batches[WARMUP])
                sys.stdout.flush()
                continue
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                for b in batches[WARMUP:]:
                    step(b)
            res = analyse(prof, args.steps, args.top)
            print_report(name, not args.no_mkldnn, res)
            out["setups"][name] = res
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
