"""Starting a run from another checkpoint's weights (`train.py --init-from CKPT`).

The new run keeps the old vocabulary's ids and appends the chars only the new text has, so
every old row of the embedding, the one-hot input kernel and the output layer is copied as it
is and only the new chars' rows come from a fresh init. The optimizer, the step and the epoch
count start afresh. The net's shape must match the old one's.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from charlm.config import ModelConfig
from charlm.data import Vocab
from charlm.errors import CharlmError

SHAPE_FIELDS = ("cell", "layers", "hidden", "input_encoding", "embed_dim")  # what fixes the weights' shapes


def shape_differences(old: ModelConfig, new: ModelConfig) -> list[str]:
    fields = [f for f in SHAPE_FIELDS if f != "embed_dim" or new.input_encoding == "embed"]
    return [f"{f} {getattr(old, f)} vs {getattr(new, f)}" for f in fields if getattr(old, f) != getattr(new, f)]


def check_compatible(old: ModelConfig, new: ModelConfig, old_vocab: Vocab, new_vocab: Vocab, where: str) -> None:
    differs = shape_differences(old, new)
    if differs:
        raise CharlmError(f"--init-from {where}: the model shape differs ({'; '.join(differs)}); "
                          f"leave those flags out to take the checkpoint's")
    if new.input_encoding == "scaled" and new_vocab.size != old_vocab.size:
        raise CharlmError(f"--init-from {where}: the scaled input is id / vocabulary size, and this text adds "
                          f"{new_vocab.size - old_vocab.size} char(s); use a model with embed or onehot input")


def transplant(old_params: Any, fresh_params: Any, old_vocab_size: int) -> Any:
    """The fresh params with every old weight copied in; along a vocabulary axis that grew, the
    first `old_vocab_size` entries are the old ones and the rest stay fresh."""

    def leaf(path, old, fresh):
        if old.shape == fresh.shape:
            return jnp.asarray(old, fresh.dtype)
        grown = [a for a, (o, f) in enumerate(zip(old.shape, fresh.shape)) if o != f]
        if old.ndim != fresh.ndim or len(grown) != 1 or old.shape[grown[0]] != old_vocab_size:
            raise CharlmError(f"--init-from: parameter {jax.tree_util.keystr(path)} has shape {old.shape}, "
                              f"this model's is {fresh.shape}")
        index = tuple(slice(0, old_vocab_size) if a == grown[0] else slice(None) for a in range(fresh.ndim))
        return fresh.at[index].set(jnp.asarray(old, fresh.dtype))

    return jax.tree_util.tree_map_with_path(leaf, old_params, fresh_params)
