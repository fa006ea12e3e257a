"""The tutorial's Keras code, ported to Keras 3 on the JAX backend, as a peer for bench.run.

    python -m bench.peers.keras_peer train --setup seed-small
    python -m bench.peers.keras_peer sample --window-chars 100

The small net is Sequential([Input((100, 1)), LSTM(256), Dropout(0.2), Dense(V, softmax)])
with categorical_crossentropy and adam on one-hot targets, as the tutorial compiles it; the
big net stacks LSTM(256, return_sequences=True), Dropout, LSTM(256), Dropout. The dense-targets
setup keeps every position (return_sequences=True; Dense acts per time step) with sparse
targets. Each step is one `train_on_batch`. `sample` is the tutorial's generator: for every
char, `model.predict` on the current [1, 100, 1] window, argmax, slide the window.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported

import keras
import numpy as np

from bench import perfkit


def build(setup: perfkit.Setup, vocab_size: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    dense = setup.objective == "all"
    layers: list = [keras.Input((perfkit.SEQ_LENGTH, 1))]
    for i in range(setup.layers):
        last_layer = i == setup.layers - 1
        layers += [keras.layers.LSTM(perfkit.HIDDEN, return_sequences=dense or not last_layer),
                   keras.layers.Dropout(perfkit.DROPOUT)]
    layers.append(keras.layers.Dense(vocab_size, activation="softmax"))
    model = keras.Sequential(layers)
    model.compile(loss="sparse_categorical_crossentropy" if dense else "categorical_crossentropy", optimizer="adam")
    return model


def make_step(setup: perfkit.Setup, vocab_size: int):
    model = build(setup, vocab_size)
    eye = np.eye(vocab_size, dtype=np.float32)

    def step(batch: dict) -> None:
        x = perfkit.scaled_inputs(batch, vocab_size)
        y = batch["targets"] if setup.objective == "all" else eye[batch["targets"][:, -1]]
        model.train_on_batch(x, y)  # returns the loss as a host float: the step has finished

    return step


def sample(args: argparse.Namespace, tokens, vocab_size: int) -> dict:
    model = build(perfkit.SETUPS["seed-small"], vocab_size)
    prime = perfkit.primes(tokens, 1)[0]

    def tutorial_loop():
        pattern = list(prime)
        for _ in range(args.window_chars):
            x = np.reshape(pattern, (1, len(pattern), 1)) / float(vocab_size)
            prediction = model.predict(x, verbose=0)
            pattern.append(int(np.argmax(prediction)))
            pattern = pattern[1:]

    return {"samples": [perfkit.time_sampler("predict-loop", 1, args.window_chars, tutorial_loop, args.reps)]}


def versions() -> dict:
    import jax

    return {"keras": keras.__version__, "backend": keras.backend.backend(), "jax": jax.__version__}


if __name__ == "__main__":
    perfkit.peer_main("keras", make_step, {"sample": sample}, versions)
