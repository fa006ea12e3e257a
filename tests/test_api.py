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
