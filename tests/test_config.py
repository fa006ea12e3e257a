import dataclasses

import pytest

from charlm.config import DataConfig, ModelConfig, PRESETS, RunConfig, TrainConfig, make_run_config
from charlm.errors import CharlmError


def test_default_preset_is_the_tutorials_small_net():
    cfg = make_run_config()
    assert (cfg.model.layers, cfg.model.hidden, cfg.model.dropout, cfg.model.input_encoding) == (1, 256, 0.2, "scaled")
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.learning_rate) == (128, 20, 1e-3)
    assert (cfg.data.seq_length, cfg.data.window_stride, cfg.data.lowercase, cfg.data.strip) == (100, 1, True, True)
    assert (cfg.data.objective, cfg.data.stateful, cfg.data.val_frac) == ("last", False, 0.0)


def test_seed_big_is_the_tutorials_larger_net():
    cfg = make_run_config("seed-big")
    assert (cfg.model.layers, cfg.model.hidden, cfg.train.batch_size, cfg.train.epochs) == (2, 256, 64, 50)


def test_overrides_change_only_their_field():
    base, cfg = make_run_config(), make_run_config(layers=2)
    assert cfg.model.layers == 2
    assert dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, layers=1)) == base


def test_none_override_keeps_the_preset_value():
    assert make_run_config("seed-big", epochs=None).train.epochs == 50


@pytest.mark.parametrize("kwargs, words", [
    ({"epochs": 0}, "epochs"), ({"batch_size": -1}, "batch_size"), ({"hidden": 0}, "hidden"),
    ({"layers": 0}, "layers"), ({"dropout": 1.0}, "dropout"), ({"dropout": -0.1}, "dropout"),
    ({"seq_length": 0}, "seq_length"), ({"learning_rate": 0.0}, "learning_rate"),
    ({"input_encoding": "bits"}, "input encoding"), ({"lowercase": "no"}, "lowercase must be true or false"),
    ({"stateful": 1}, "stateful must be true or false"), ({"precision": "fp8"}, "precision"),
])
def test_bad_values_are_refused_with_the_field_name(kwargs, words):
    with pytest.raises(CharlmError, match=words):
        make_run_config(**kwargs)


def test_unknown_preset_and_field():
    with pytest.raises(CharlmError, match="unknown preset"):
        make_run_config("huge")
    with pytest.raises(CharlmError, match="unknown config field"):
        make_run_config(wings=2)


def test_round_trip_through_dict():
    cfg = RunConfig(ModelConfig(vocab_size=45, layers=2), DataConfig(seq_length=50), TrainConfig(epochs=3))
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_from_dict_rejects_unknown_fields():
    d = RunConfig().to_dict()
    d["model"]["colour"] = "red"
    with pytest.raises(CharlmError, match="colour"):
        RunConfig.from_dict(d)


def test_presets_are_valid():
    for name in PRESETS:
        make_run_config(name)
