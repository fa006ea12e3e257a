"""The base model that ships with charlm, and the export that makes it (`charlm.pretrain`'s last stage).

`--init-from base` (or `charlm.train(..., init_from="base")`) starts from a GRU pretrained on a few
million chars of public-domain English prose, so a small book is written well within minutes.
The name resolves in `charlm.checkpoint` (a local directory called `base` wins). Beside the
weights: MODEL_CARD.md for people and card.json for code, whose checksums `verify` checks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from charlm import checkpoint
from charlm.checkpoint import BASE_DIR
from charlm.data import Vocab
from charlm.errors import CharlmError
from charlm.training import create_train_state, eval_params

CARD_JSON = "card.json"
CARD_MD = "MODEL_CARD.md"
# A capital starts at 1/1000 of its small letter's odds: lowercased text then pays 0.001 nats/char
# for the capitals' share (1/20 cost 0.05 and put capitals into samples).
CAPITAL_LOGIT_OFFSET = float(np.log(1e-3))


def with_capitals(params, vocab: Vocab):
    """The params with each capital's embedding row and output column copied from its small letter.

    The base is trained lowercased; this gives a `--no-lowercase` fine-tune a sensible start
    for capitals instead of random rows."""
    params = dict(jax.tree.map(jnp.asarray, params))
    small = jnp.array([vocab.chars.index(c.lower()) for c in vocab.chars if c.isupper()])
    caps = jnp.array([vocab.chars.index(c) for c in vocab.chars if c.isupper()])
    if "embed" in params:
        table = params["embed"]["embedding"]
        params["embed"] = {"embedding": table.at[caps].set(table[small])}
    out = dict(params["output"])
    out["kernel"] = out["kernel"].at[:, caps].set(out["kernel"][:, small])
    out["bias"] = out["bias"].at[caps].set(out["bias"][small] + CAPITAL_LOGIT_OFFSET)
    params["output"] = out
    return params


def _checksums(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name not in (CARD_JSON, CARD_MD)}


def export_base(run_dir: str | Path, out: str | Path, *, command: str, machine: str,
                wall_seconds: float | None = None) -> Path:
    """Writes the best weights of the pretraining run in `run_dir` to `out` (the averaged weights,
    with a zeroed optimizer state, which compresses to nothing), with the model card and the files'
    checksums. `out` is written whole beside itself and then swapped in, and only replaces a
    directory that holds a base model (or nothing). `wall_seconds` defaults to the training time
    the run's metrics record (over all its --resume'd parts)."""
    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and any(out.iterdir()) and not (out / CARD_JSON).is_file():
        raise CharlmError(f"{out} is not empty and holds no base model ({CARD_JSON}); choose another --export")
    state, cfg, vocab, meta = checkpoint.restore(run_dir / "ckpt")
    params = with_capitals(eval_params(state), vocab)
    pretraining = cfg.train
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, ema_decay=0.0, max_time=None))
    fresh = create_train_state(cfg, jax.random.key(0)).replace(params=params)
    # The corpus file is the builder's, not the user's: no path, so --novelty asks for --text.
    corpus = {k: v for k, v in meta.get("corpus", {}).items() if k not in ("source", "files")}
    staged = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staged, ignore_errors=True)
    with checkpoint.BestCheckpoint(staged) as best:
        best.save(meta["epoch"], fresh, {"vocab": meta["vocab"], "metric": meta["metric"], "seeds": meta["seeds"],
                                         "corpus": corpus, "config": cfg.to_dict()}, meta["loss"])
    metrics = [json.loads(line) for line in (run_dir / "ckpt" / "metrics.jsonl").read_text().splitlines() if line]
    sources = json.loads((run_dir / "corpus" / "sources.json").read_text())["sources"]
    if wall_seconds is None:
        wall_seconds = metrics[-1]["elapsed"]
    card = {"name": "base", "sources": sources, "chars": meta["corpus"]["chars"], "vocab": vocab.chars,
            "lowercase": cfg.data.lowercase, "architecture": cfg.model.__dict__ | {"vocab_size": vocab.size},
            "train": pretraining.__dict__, "val_frac": cfg.data.val_frac, "val_loss_nats_per_char": meta["loss"],
            "epochs": meta["epoch"], "wall_seconds": round(wall_seconds), "machine": machine, "command": command,
            "curve": [{k: r.get(k) for k in ("epoch", "step", "elapsed", "val_loss", "train_loss", "chars_per_s")}
                      for r in metrics],
            "sha256": _checksums(staged)}
    (staged / CARD_JSON).write_text(json.dumps(card, indent=1) + "\n")
    (staged / CARD_MD).write_text(model_card(card))
    if out.exists():
        shutil.rmtree(out)
    os.replace(staged, out)
    return out


def model_card(card: dict) -> str:
    a = card["architecture"]
    lines = ["# charlm base model", "",
             f"A {a['layers']}x{a['hidden']} {a['cell'].upper()} with a {a['embed_dim']}-wide embedding, "
             f"pretrained {'lowercased ' if card['lowercase'] else ''}on {card['chars']:,} chars of English "
             f"prose; fine-tune it with `train.py --preset finetune --init-from base`.", "",
             "## Sources (Debian packages)", "", "| source | package | version | licence | chars |", "|---|---|---|---|---|"]
    lines += [f"| {s['name']} | {s.get('debian_package', '-')} | {s.get('version', '-')} | {s.get('licence', '-')} | "
              f"{s['chars']:,} |" for s in card["sources"]]
    lines += ["", "No Alice, no program documentation, no source code.", "",
              "## Vocabulary", "", f"{len(card['vocab'])} chars: newline and printable ASCII (32-126). Trained "
              "lowercased; each capital's rows are its small letter's, its output bias lowered by log(1000).", "",
              "## Training", "", f"- machine: {card['machine']}", f"- training time: {card['wall_seconds'] / 60:.0f} min, "
              f"{len(card['curve'])} epochs (the last one cut short by the budget); these weights are epoch "
              f"{card['epochs']}'s, the lowest val loss (averaged weights, EMA {card['train']['ema_decay']})",
              f"- pretraining speed: {np.median([r['chars_per_s'] for r in card['curve']]):,.0f} chars/s (median over epochs)",
              f"- command: `{card['command']}`",
              f"- held-out loss on the last {card['val_frac']:.0%} of its own corpus: "
              f"**{card['val_loss_nats_per_char']:.4f} nats/char** ({card['val_loss_nats_per_char'] / np.log(2):.3f} "
              f"bits/char)", "", "| epoch | minutes | train loss | val loss |", "|---|---|---|---|"]
    lines += [f"| {r['epoch']} | {(r.get('elapsed') or 0) / 60:.1f} | {r.get('train_loss') or float('nan'):.4f} | "
              f"{r.get('val_loss') or float('nan'):.4f} |" for r in card["curve"]]
    lines += ["", "## Checksums (sha256)", ""] + [f"- `{k}` {v}" for k, v in card["sha256"].items()]
    return "\n".join(lines) + "\n"


def verify_base(directory: str | Path = BASE_DIR) -> dict:
    """The card of the base model in `directory`, after checking its files against the card's checksums."""
    directory = Path(directory)
    try:
        card = json.loads((directory / CARD_JSON).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CharlmError(f"the base model's card {directory / CARD_JSON} is missing or unreadable: {e}") from None
    found = _checksums(directory)
    if found != card["sha256"]:
        bad = sorted(set(found.items()) ^ set(card["sha256"].items()))
        raise CharlmError(f"the base model in {directory} does not match its card's checksums ({bad[0][0]} ...)")
    return card
