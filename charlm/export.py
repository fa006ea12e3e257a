"""charlm-export (`python -m charlm.export`): a model as one HTML file that generates text in any
browser, from disk, with no network, no server and no Python.

    charlm-export --ckpt runs/best --out alice.html

The page (charlm/web/export.html) holds the weights (base64, 16-bit floats where that keeps
argmax text identical to the 32-bit weights on the checkpoint's own seed windows, else 32-bit),
a plain JavaScript version of every cell charlm trains (LSTM, GRU, tanh RNN), every input
encoding and layer count, the sampler with the page's controls, and the model card. At
temperature 0 its text is sample.py's for the same prime: the JavaScript computes in float64
from the same float32 (or float16) weights, so only a near-tie between the two likeliest chars
could go the other way (`near_ties` counts how often that is close on the checked text).
"""

from __future__ import annotations

import argparse
import base64
import sys
from collections.abc import Sequence

import numpy as np

from charlm.cli import Parser, guarded, prepare_process, web_page, write_output

CHECK_CHARS = 300     # argmax chars compared per seed window when choosing 16-bit weights
CHECK_SEEDS = 4
NEAR_TIE = 1e-4       # logit gap under which float32 and float64 could pick different chars


def _flat(params) -> dict[str, np.ndarray]:
    """The parameters by path ("gru_0/recurrent_kernel"), as float32 arrays."""
    from flax.traverse_util import flatten_dict

    return {k: np.asarray(v, np.float32) for k, v in flatten_dict(params, sep="/").items()}


def argmax_texts(params, cfg, vocab, primes: Sequence[str], length: int = CHECK_CHARS) -> list[str]:
    from charlm.sampling import generate

    return [generate(params, cfg, vocab, prime, length=length, temperature=0.0)[0] for prime in primes]


def weight_dtype(params, cfg, vocab, primes: Sequence[str]) -> str:
    """float16 when the weights rounded to 16 bits give the same argmax text on `primes`, else float32."""
    from flax.traverse_util import unflatten_dict

    rounded = unflatten_dict({k: v.astype(np.float16).astype(np.float32) for k, v in _flat(params).items()}, sep="/")
    same = argmax_texts(rounded, cfg, vocab, primes) == argmax_texts(params, cfg, vocab, primes)
    return "float16" if same else "float32"


def export(ckpt: str, dtype: str = "auto") -> tuple[str, dict]:
    """The page for `ckpt`, and what went into it: {"dtype", "bytes", "params"}."""
    from charlm.checkpoint import resolve, restore
    from charlm.serve import model_card

    state, cfg, vocab, meta = restore(ckpt)
    params = state.params
    seeds = list(meta.get("seeds") or [])
    if dtype == "auto":
        dtype = weight_dtype(params, cfg, vocab, seeds[:CHECK_SEEDS]) if seeds else "float32"
    flat = _flat(params)
    m, d = cfg.model, cfg.data
    model = {
        "cell": m.cell, "layers": m.layers, "hidden": m.hidden, "encoding": m.input_encoding, "vocab": vocab.chars,
        "lowercase": d.lowercase, "strip_punctuation": d.strip_punctuation, "dtype": dtype,
        "weights": {k: {"shape": list(v.shape), "data": base64.b64encode(v.astype(dtype).tobytes()).decode()}
                    for k, v in flat.items()},
        "seeds": seeds, "card": model_card(cfg, vocab, meta, resolve(ckpt)),
    }
    page = web_page("export.html", "MODEL", model)
    return page, {"dtype": dtype, "bytes": len(page.encode()), "params": int(sum(v.size for v in flat.values()))}


def near_ties(params, cfg, vocab, prime: str, length: int = CHECK_CHARS) -> int:
    """How many of the argmax continuation's steps have their two likeliest logits within NEAR_TIE."""
    from charlm import probe
    from charlm.sampling import encode_prime

    text = prime + argmax_texts(params, cfg, vocab, [prime], length)[0]
    ids = encode_prime(text, vocab, cfg)
    tr = probe.trace(params, cfg.model, ids, top_k=2)
    gaps = np.log(tr.guess_probs[:, 0]) - np.log(tr.guess_probs[:, 1])
    return int(np.sum(gaps[len(ids) - length - 1:-1] < NEAR_TIE))


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="charlm-export", description="Write a model as one HTML file that generates text in any browser "
                                                  "from disk: no network, no server, no Python.")
    p.add_argument("--ckpt", required=True, metavar="DIR", help="checkpoint directory written by train.py, or base")
    p.add_argument("--out", required=True, metavar="FILE", help="the HTML file to write")
    p.add_argument("--dtype", choices=("auto", "float16", "float32"), default="auto",
                   help="the weights' precision in the file; auto: 16-bit where the argmax text on the checkpoint's "
                        "seed windows stays the same, else 32-bit (default: %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    prepare_process()
    args = parser().parse_args(argv)

    def run() -> None:
        page, info = export(args.ckpt, args.dtype)
        write_output(args.out, page)
        print(f"Wrote {args.out}: {info['bytes'] / 1e6:.2f} MB, {info['params']:,} parameters as {info['dtype']}; "
              f"open it in a browser (no server needed)")

    return guarded("charlm-export", run)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
