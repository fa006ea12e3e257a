"""Plain PyTorch peer for bench.run: the tutorial's nets in eager PyTorch on every CPU core (2 threads here),
or on the GPU (cuDNN) when there is one.

    python -m bench.peers.torch_peer train --setup seed-big
    python -m bench.peers.torch_peer sample --chars 1000 --streams 64

nn.LSTM(1, 256, num_layers) -> Dropout(0.2) -> Linear(256, V), Adam lr 1e-3, cross-entropy,
on the same batches as charlm. For two layers, nn.LSTM's own dropout between the layers plus
the Dropout after them is the tutorial's LSTM, Dropout, LSTM, Dropout. `sample` is the usual
stateful loop: prime once, then one nn.LSTM step per char carrying (h, c), argmax.
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn

from bench import perfkit

# The GPU when there is one (cuDNN's LSTM), else every CPU core.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


class CharNet(nn.Module):
    def __init__(self, layers: int, vocab_size: int):
        super().__init__()
        self.lstm = nn.LSTM(1, perfkit.HIDDEN, num_layers=layers, batch_first=True,
                            dropout=perfkit.DROPOUT if layers > 1 else 0.0)
        self.drop = nn.Dropout(perfkit.DROPOUT)
        self.out = nn.Linear(perfkit.HIDDEN, vocab_size)

    def forward(self, x_BxTx1, state=None, last_only: bool = True):
        h_BxTxH, state = self.lstm(x_BxTx1, state)
        if last_only:
            h_BxTxH = h_BxTxH[:, -1]
        return self.out(self.drop(h_BxTxH)), state


def make_step(setup: perfkit.Setup, vocab_size: int):
    """The timed step: forward, backward and Adam, synchronised on CUDA."""
    torch.manual_seed(0)
    model = CharNet(setup.layers, vocab_size).train().to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=perfkit.LEARNING_RATE)
    last = setup.objective == "last"

    def step(batch: dict) -> None:
        x = torch.from_numpy(perfkit.scaled_inputs(batch, vocab_size)).to(DEVICE)
        y = torch.from_numpy(batch["targets"][:, -1] if last else batch["targets"]).long().to(DEVICE)
        opt.zero_grad(set_to_none=True)
        logits, _ = model(x, last_only=last)
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab_size), y.reshape(-1))
        loss.backward()
        opt.step()  # eager CPU: the work is done when this returns
        if DEVICE.type == "cuda":  # eager CUDA only queues it
            torch.cuda.synchronize()

    return step


def sample(args: argparse.Namespace, tokens, vocab_size: int) -> dict:
    torch.manual_seed(0)
    model = CharNet(1, vocab_size).eval().to(DEVICE)
    prime = torch.from_numpy(perfkit.primes(tokens, args.streams)).float().to(DEVICE) / vocab_size

    @torch.inference_mode()
    def stateful(rows: int):
        logits, state = model(prime[:rows, :, None])
        out = []
        for _ in range(args.chars):
            ids = logits.argmax(-1)
            out.append(ids)
            logits, state = model((ids.float() / vocab_size)[:, None, None], state)
        return torch.stack(out, 1).cpu()  # on CUDA, waits for the last char

    return {"prime_chars": prime.shape[1], "samples": [
        perfkit.time_sampler("stateful", 1, args.chars, lambda: stateful(1), args.reps),
        perfkit.time_sampler("stateful", args.streams, args.chars, lambda: stateful(args.streams), args.reps),
    ]}


def versions() -> dict:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(DEVICE),
            **({"gpu": torch.cuda.get_device_name(), "cudnn": torch.backends.cudnn.version()}
               if DEVICE.type == "cuda" else {})}


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)  # every core, as XLA uses them: 2 on the project's machine
    perfkit.peer_main("torch", make_step, {"sample": sample}, versions)
