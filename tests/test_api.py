import charlm


def test_every_exported_name_resolves():
    for name in charlm.__all__:
        assert getattr(charlm, name) is not None, name


def test_readme_api_example_runs(tmp_path, wonderland_path):
    raw = charlm.read_text(wonderland_path)[:4000]
    cfg = charlm.make_run_config("seed-small", epochs=1, hidden=16, seq_length=20, batch_size=64)
    result = charlm.train(raw, cfg, tmp_path / "ck", log=lambda s: None)
    state, cfg, vocab, meta = charlm.restore(tmp_path / "ck")
    text = charlm.generate(state.params, cfg, vocab, meta["seeds"][0], length=50, temperature=0.8, seed=0)[0]
    assert len(text) == 50 and result.best_path is not None


def test_readme_step_by_hand_example_runs(wonderland_path):
    import jax
    import numpy as np
    raw = charlm.read_text(wonderland_path)
    book = charlm.clean_text(raw)
    vocab = charlm.Vocab.from_text(book)
    cfg = charlm.make_run_config(hidden=64, vocab_size=vocab.size)
    state = charlm.create_train_state(cfg, jax.random.key(0))
    batch = charlm.gather_batch(vocab.encode(book), np.arange(128), cfg.data.seq_length)
    state, metrics = charlm.train_step(state, batch, jax.random.key(1))
    assert int(state.step) == 1 and float(metrics["count"]) == 128
