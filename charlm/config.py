"""Frozen configs for the model, the data and the training run, and the named presets.

Every field is validated on construction, so a bad flag or a hand-edited checkpoint fails
with one clear `CharlmError` before anything is trained or written. Configs round-trip
through plain dicts (`to_dict`/`from_dict`), which is how checkpoints store them as JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

from charlm.errors import CharlmError

INPUT_ENCODINGS = ("scaled", "onehot", "embed")
CELLS = ("lstm", "gru", "rnn")
PRECISIONS = ("float32", "bfloat16")
OBJECTIVES = ("last", "all")
WINDOWINGS = ("sliding", "sentences")
LR_SCHEDULES = ("constant", "cosine", "exponential")
CONTEXT_MODES = ("stateful", "window")  # the sampler's: carry the state, or the tutorial's sliding window


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise CharlmError(message)


def _positive_int(name: str, value: Any) -> None:
    _require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
             f"{name} must be a positive integer, got {value!r}")


def _probability(name: str, value: Any) -> None:
    _require(isinstance(value, (int, float)) and 0.0 <= value < 1.0,
             f"{name} must be in [0, 1), got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """The network: input encoding -> `layers` x LSTM(`hidden`) + dropout -> Dense logits."""

    vocab_size: int = 0             # set from the corpus; 0 until then
    hidden: int = 256               # LSTM units per layer (the tutorial: 256)
    layers: int = 1                 # stacked LSTM layers (tutorial small net: 1, larger net: 2)
    dropout: float = 0.2            # dropout after each LSTM layer (tutorial: 0.2)
    input_encoding: str = "scaled"  # scaled: id / vocab as one float (tutorial); onehot; embed
    embed_dim: int = 64             # embedding width, only for input_encoding="embed"
    cell: str = "lstm"              # lstm (the tutorial), gru or rnn (a tanh RNN; both as in char-rnn)
    input_dropout: float = 0.0      # dropout on the input features (tutorial extension 6)
    precision: str = "float32"      # bfloat16: LSTM recurrent matmuls in bf16 (state, gates, loss stay f32)
    # Regularisers for recurrent nets (Gal & Ghahramani 2016; Merity et al. 2017, AWD-LSTM):
    variational: bool = False       # dropout and input_dropout masks one per sequence, shared over time
    weight_drop: float = 0.0        # DropConnect on each layer's recurrent kernel, one mask per batch
    embed_dropout: float = 0.0      # drop whole chars from the input (embed/onehot rows), one mask per batch

    def __post_init__(self):
        _require(isinstance(self.vocab_size, int) and self.vocab_size >= 0,
                 f"vocab_size must be a non-negative integer, got {self.vocab_size!r}")
        _positive_int("hidden", self.hidden)
        _positive_int("layers", self.layers)
        _positive_int("embed_dim", self.embed_dim)
        _probability("dropout", self.dropout)
        _probability("input_dropout", self.input_dropout)
        _probability("weight_drop", self.weight_drop)
        _probability("embed_dropout", self.embed_dropout)
        _require(isinstance(self.variational, bool), f"variational must be true or false, got {self.variational!r}")
        _require(self.embed_dropout == 0 or self.input_encoding != "scaled",
                 "embed_dropout drops rows of an embedding or one-hot input; the scaled input has none "
                 "(use --input-encoding embed or onehot)")
        _require(self.cell in CELLS, f"cell must be one of {', '.join(CELLS)}; got {self.cell!r}")
        _require(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}; "
                 f"got {self.precision!r}")
        _require(self.input_encoding in INPUT_ENCODINGS,
                 f"input encoding must be one of {', '.join(INPUT_ENCODINGS)}; got {self.input_encoding!r}")


@dataclass(frozen=True)
class DataConfig:
    """How the text becomes training windows."""

    seq_length: int = 100            # chars per input window (tutorial: 100)
    stride: int | None = None        # step between window starts; None: 1 for objective last (the
                                     # tutorial), seq_length for objective all (no overlap)
    lowercase: bool = True           # lowercase the text first, as the tutorial does
    strip: bool = True               # drop a Project Gutenberg header/footer when the markers are present
    strip_punctuation: bool = False  # remove punctuation chars (tutorial extension 2)
    objective: str = "last"          # last: score the char after each window (tutorial); all: every position
    stateful: bool = False           # B contiguous streams, LSTM state carried from batch to batch
    windowing: str = "sliding"       # sliding windows, or one sentence per window (tutorial extension 4)
    val_frac: float = 0.0            # validate on this share of the text, the contiguous slice before the test tail
    test_frac: float = 0.0           # hold out this contiguous last share of the text from everything

    def __post_init__(self):
        for name in ("lowercase", "strip", "strip_punctuation", "stateful"):  # hand-edited JSON: "no" is truthy
            _require(isinstance(getattr(self, name), bool), f"{name} must be true or false, got {getattr(self, name)!r}")
        _positive_int("seq_length", self.seq_length)
        if self.stride is not None:
            _positive_int("stride", self.stride)
        _require(self.objective in OBJECTIVES, f"objective must be one of {', '.join(OBJECTIVES)}; got {self.objective!r}")
        _require(self.windowing in WINDOWINGS, f"windowing must be one of {', '.join(WINDOWINGS)}; got {self.windowing!r}")
        _probability("val_frac", self.val_frac)
        _probability("test_frac", self.test_frac)
        _require(self.val_frac + self.test_frac < 1.0,
                 f"val_frac {self.val_frac} + test_frac {self.test_frac} leave no text to train on")
        _require(not (self.stateful and self.objective != "all"),
                 "stateful training streams need the dense objective (--objective all)")
        _require(not (self.windowing == "sentences" and self.objective != "all"),
                 "sentence windows need the dense objective (--objective all): padding has no next char")
        _require(not (self.windowing == "sentences" and self.stateful),
                 "sentence windows start from a zero state; they cannot be combined with --stateful")

    @property
    def window_stride(self) -> int:
        if self.stride is not None:
            return self.stride
        return self.seq_length if self.objective == "all" else 1


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation run."""

    epochs: int = 20              # passes over all windows (tutorial small net: 20)
    batch_size: int = 128         # windows per Adam step (tutorial small net: 128)
    learning_rate: float = 1e-3   # Adam step size (Keras default)
    seed: int = 0                 # fixes init, dropout and the shuffling order
    clip_norm: float | None = None  # clip gradients to this global norm (None: no clipping)
    lr_schedule: str = "constant"   # constant, cosine (decay to 0 at the last epoch) or exponential
    warmup_steps: int = 0         # linear warm-up from 0 to learning_rate over these steps
    lr_decay: float = 0.1         # exponential schedule: the lr factor reached at the last epoch
    max_time: float | None = None   # stop cleanly after this many minutes of training
    weight_decay: float = 0.0     # decoupled (AdamW) decay of the kernels; biases and the embedding are not decayed
    ema_decay: float = 0.0        # keep an exponential moving average of the weights (e.g. 0.999; 0: off);
                                  # it is what validation scores and the best checkpoint holds
    patience: int | None = None   # early stopping: end after this many epochs without a better val loss
    # Fine-tuning (ULMFiT's discriminative rates and gradual unfreezing): every layer but the output
    # one learns at body_lr_scale x the lr at first, rising linearly to 1 x over body_lr_ramp steps
    body_lr_scale: float = 1.0    # 0: the body is frozen at first; 1: off
    body_lr_ramp: int = 0         # steps to reach the full lr (0 with a scale below 1: never)

    def __post_init__(self):
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        _require(isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0,
                 f"learning_rate must be positive, got {self.learning_rate!r}")
        _require(isinstance(self.seed, int) and not isinstance(self.seed, bool),
                 f"seed must be an integer, got {self.seed!r}")
        _require(self.clip_norm is None or (isinstance(self.clip_norm, (int, float)) and self.clip_norm > 0),
                 f"clip_norm must be positive, got {self.clip_norm!r}")
        _require(self.lr_schedule in LR_SCHEDULES,
                 f"lr schedule must be one of {', '.join(LR_SCHEDULES)}; got {self.lr_schedule!r}")
        _require(isinstance(self.warmup_steps, int) and self.warmup_steps >= 0,
                 f"warmup_steps must be a non-negative integer, got {self.warmup_steps!r}")
        _require(isinstance(self.lr_decay, (int, float)) and 0 < self.lr_decay <= 1,
                 f"lr_decay must be in (0, 1], got {self.lr_decay!r}")
        _require(self.max_time is None or (isinstance(self.max_time, (int, float)) and self.max_time > 0),
                 f"max_time must be a positive number of minutes, got {self.max_time!r}")
        _require(isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0,
                 f"weight_decay must be non-negative, got {self.weight_decay!r}")
        _probability("ema_decay", self.ema_decay)
        if self.patience is not None:
            _positive_int("patience", self.patience)
        _require(isinstance(self.body_lr_scale, (int, float)) and 0 <= self.body_lr_scale <= 1,
                 f"body_lr_scale must be in [0, 1], got {self.body_lr_scale!r}")
        _require(isinstance(self.body_lr_ramp, int) and self.body_lr_ramp >= 0,
                 f"body_lr_ramp must be a non-negative integer, got {self.body_lr_ramp!r}")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run; stored whole in every checkpoint."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunConfig":
        _require(isinstance(d, Mapping), "config must be a JSON object")
        return cls(model=_build(ModelConfig, d.get("model", {})),
                   data=_build(DataConfig, d.get("data", {})),
                   train=_build(TrainConfig, d.get("train", {})))


C = TypeVar("C")


def _build(cls: type[C], values: Any) -> C:
    _require(isinstance(values, Mapping), f"{cls.__name__} must be a JSON object")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    _require(not unknown, f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return cls(**values)


DYNAMIC_METHODS = ("rms", "sgd")


@dataclass(frozen=True)
class DynamicSettings:
    """Dynamic evaluation's knobs. The rms defaults were chosen on the validation slice of
    Alice, never on a test tail (BENCHMARKS.md, "Generalisation with a held-out test tail")."""

    method: str = "rms"      # rms: Krause et al.'s RMS-normalised step with decay; sgd: plain steps
    lr: float = 3e-4         # step size (rms: in units of each parameter's RMS gradient)
    decay: float = 1e-3      # pull toward the trained weights per update (0: none)
    segment: int = 20        # chars scored between two updates
    adapt_chars: int = 15_000  # chars before the scored tail adapted on first (not scored)
    eps: float = 1e-5        # rms: added to the RMS gradient
    rms_floor: float = 0.1   # rms: no parameter's RMS below this share of the mean RMS
    stat_segments: int = 2048  # rms: training segments the RMS gradient is averaged over

    def __post_init__(self):
        if self.method not in DYNAMIC_METHODS:
            raise CharlmError(f"dynamic method must be one of {', '.join(DYNAMIC_METHODS)}; got {self.method!r}")
        for name in ("lr", "decay", "eps", "rms_floor"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) >= 0):
                raise CharlmError(f"dynamic {name} must be a non-negative number, got {getattr(self, name)!r}")
        for name in ("segment", "stat_segments"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) > 0):
                raise CharlmError(f"dynamic {name} must be a positive integer, got {getattr(self, name)!r}")
        if not (isinstance(self.adapt_chars, int) and self.adapt_chars >= 0):
            raise CharlmError(f"dynamic adapt_chars must be a non-negative integer, got {self.adapt_chars!r}")


@dataclass(frozen=True)
class SamplingSettings:
    """How the sampler turns the model's logits into the next char, applied in this order:
    repetition penalty, n-gram ban, temperature, top-k, top-p, then a draw (argmax at T 0)."""

    temperature: float = 0.0          # 0: argmax (the tutorial); > 0: sample from softmax(logits / T)
    top_k: int | None = None          # draw among the K most likely chars only
    top_p: float | None = None        # nucleus: draw among the smallest set whose probability reaches P
    repetition_penalty: float = 1.0   # CTRL: divide positive / multiply negative logits of recent chars
    penalty_window: int = 64          # the last N generated chars the penalty looks at
    no_repeat_ngram: int | None = None  # never emit a char that completes an N-gram already in the text

    def __post_init__(self):
        def number(name, ok, what):
            v = getattr(self, name)
            _require(isinstance(v, (int, float)) and not isinstance(v, bool) and ok(v), f"{name} must be {what}, got {v!r}")
        number("temperature", lambda v: 0 <= v <= 100, "a number in [0, 100]")
        number("repetition_penalty", lambda v: 1 <= v <= 100, "a number in [1, 100] (1: off)")
        if self.top_p is not None:
            number("top_p", lambda v: 0 < v <= 1, "a number in (0, 1]")
        for name in ("top_k", "no_repeat_ngram"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        _positive_int("penalty_window", self.penalty_window)
        _require(self.no_repeat_ngram is None or self.no_repeat_ngram >= 2,
                 f"no_repeat_ngram must be at least 2, got {self.no_repeat_ngram!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


# The tutorial's two nets. Flags given explicitly override these, field by field.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "seed-small": {"model": {"hidden": 256, "layers": 1, "dropout": 0.2, "input_encoding": "scaled"},
                   "train": {"batch_size": 128, "epochs": 20}},
    "seed-big": {"model": {"hidden": 256, "layers": 2, "dropout": 0.2, "input_encoding": "scaled"},
                 "train": {"batch_size": 64, "epochs": 50}},
    # Chosen by experiment (bench/fast_search.py at f8f6369, BENCHMARKS.md). Of six candidates given the same
    # 4-minute CPU budget, this reached the lowest held-out loss on Alice (1.452 nats/char), with its
    # cosine schedule ending at about 23 epochs. Given the whole 15 minutes, the same net overfits
    # 130k chars long before its schedule decays (best 1.465-1.470), so the preset keeps the short
    # schedule; max_time only caps a slow machine.
    "fast": {"model": {"hidden": 512, "layers": 1, "dropout": 0.3, "input_encoding": "embed", "cell": "gru"},
             "data": {"objective": "all", "stateful": True, "seq_length": 100, "val_frac": 0.1},
             "train": {"batch_size": 32, "epochs": 23, "learning_rate": 2e-3, "clip_norm": 5.0,
                       "lr_schedule": "cosine", "warmup_steps": 50, "max_time": 15.0}},
    # The lowest validation loss in 15 minutes of this 2-core CPU (bench/generalisation.py at 10fc6c2,
    # BENCHMARKS.md; chosen on the validation slice with the test tail held out): fast's GRU with
    # AWD-LSTM-style regularisation (variational dropout, DropConnect on U, embedding dropout),
    # decoupled weight decay and a weight average, so it can use the whole budget without
    # memorising the book. The cosine schedule is refitted to the 15 minutes after epoch 2.
    "best": {"model": {"hidden": 512, "layers": 1, "dropout": 0.4, "input_encoding": "embed", "cell": "gru",
                       "variational": True, "input_dropout": 0.1, "weight_drop": 0.3, "embed_dropout": 0.1},
             "data": {"objective": "all", "stateful": True, "seq_length": 100, "val_frac": 0.1},
             "train": {"batch_size": 32, "epochs": 300, "learning_rate": 2e-3, "clip_norm": 5.0,
                       "lr_schedule": "cosine", "warmup_steps": 50, "max_time": 15.0, "weight_decay": 0.1,
                       "ema_decay": 0.999}},
}
DEFAULT_PRESET = "seed-small"
# Fine-tuning the base model: best's net, schedule and learning rate with lighter regularisers,
# chosen on Alice's validation slice only (bench/finetune.py, BENCHMARKS.md). best's dropout
# 0.4 and DropConnect 0.3 undo what the base knows (val 1.458 after 5 minutes); none overfits
# within a minute (1.189); dropout 0.2 with DropConnect 0.1 did best (1.179). A body-lr ramp
# (ULMFiT) changed val by 0.0008, so it stays off. Five minutes: fifteen reached the same val
# (1.1794 against 1.1791). train.py's preset when --init-from names the packaged base and
# --preset is not given.
FINETUNE_PRESET = "finetune"
PRESETS[FINETUNE_PRESET] = {"model": {**PRESETS["best"]["model"], "dropout": 0.2, "weight_drop": 0.1,
                                      "input_dropout": 0.0, "embed_dropout": 0.0},
                            "data": dict(PRESETS["best"]["data"]),
                            "train": {**PRESETS["best"]["train"], "max_time": 5.0}}


def make_run_config(preset: str = DEFAULT_PRESET, **overrides: Any) -> RunConfig:
    """Builds a RunConfig from a preset, then applies overrides.

    Overrides are plain field names (`hidden=512`, `epochs=1`, `seq_length=50`); each is
    routed to the one config that has that field. `None` values are ignored, so argparse
    defaults of None mean "take the preset's value".
    """
    _require(preset in PRESETS, f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    sections: dict[str, dict[str, Any]] = {k: dict(v) for k, v in PRESETS[preset].items()}
    owners = {f.name: section for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    for name, value in overrides.items():
        if value is None:
            continue
        _require(name in owners, f"unknown config field {name!r}")
        sections.setdefault(owners[name], {})[name] = value
    return RunConfig(model=ModelConfig(**sections.get("model", {})),
                     data=DataConfig(**sections.get("data", {})),
                     train=TrainConfig(**sections.get("train", {})))


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
