"""charlm: the classic char-level LSTM text generator, as a JAX/Flax library.

Every step of train.py and sample.py is a plain function here:

    import charlm
    raw = charlm.read_text("wonderland.txt")
    cfg = charlm.make_run_config("seed-small", epochs=1)
    result = charlm.train(raw, cfg, "checkpoints")
    state, cfg, vocab, meta = charlm.restore("checkpoints")
    print(charlm.generate(state.params, cfg, vocab, meta["seeds"][0], length=200, temperature=0.8, top_p=0.95)[0])

The base model that ships with charlm is the checkpoint named "base": `charlm.restore("base")`,
`charlm.train(raw, charlm.make_run_config("finetune"), "checkpoints", init_from="base")`.

Names are imported from their modules on first use, so `import charlm` is instant and
`python -m charlm.evaluate` runs without the package importing that module first.

Importing it changes nothing in the process. Training (`charlm.train`, train.py) sets glibc's
allocator up for XLA:CPU first (`charlm.tune_allocator`, see `charlm.host`); a loop of your own
over `train_step` can call it before its first JAX computation.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "config": ["DataConfig", "DynamicSettings", "ModelConfig", "PRESETS", "RunConfig", "SamplingSettings",
               "TrainConfig", "make_run_config"],
    "errors": ["CharlmError"],
    "host": ["allocator_status", "tune_allocator"],
    "corpus": ["clean_text", "download_gutenberg", "find_text_files", "read_text", "read_texts", "resolve_corpus",
               "strip_gutenberg"],
    "data": ["Vocab", "WindowOrder", "gather_batch", "sentence_windows", "shuffled", "split_point", "stream_starts",
             "window_starts"],
    "tokens": ["Cleaning", "TokenFile", "encode_corpus"],
    "dataset": ["Corpus", "TextFiles", "Windows", "epoch_batches", "held_out_splits", "load_corpus", "prepare_corpus",
                "training_windows"],
    "model": ["CharLSTM", "init_params", "zero_carry"],
    "training": ["TrainState", "create_train_state", "eval_params", "eval_step", "stateful_train_step", "train_step"],
    "checkpoint": ["BASE_DIR", "BestCheckpoint", "read_meta", "restore"],
    "base": ["verify_base"],
    "scoring": ["Score", "dynamic_nll", "evaluate_checkpoint", "gradient_rms", "last_window_nll", "stream_nll",
                 "tail_nll"],
    "finetune": ["transplant"],
    "trainer": ["TrainResult", "train"],
    "sampling": ["StopCut", "generate", "generate_stateful", "generate_window", "stream"],
    "beam": ["beam_generate", "beam_search"],
    "novelty": ["load_word_list", "real_word_share", "training_text", "verbatim_shares"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"charlm.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'charlm' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
