import json

import pytest

from charlm.errors import CharlmError
from charlm.plot import main, plot_runs, read_metrics


def write_log(path, records):
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_read_metrics_from_a_run_dir_or_file(tmp_path):
    records = [{"epoch": 1, "elapsed": 10.0, "train_loss": 2.0, "val_loss": 2.1},
               {"epoch": 2, "elapsed": 20.0, "train_loss": 1.8, "val_loss": 1.9}]
    write_log(tmp_path / "run", records)
    assert read_metrics(tmp_path / "run") == records
    assert read_metrics(tmp_path / "run" / "metrics.jsonl") == records
    with pytest.raises(CharlmError, match="no metrics log"):
        read_metrics(tmp_path / "missing")


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    write_log(tmp_path / "a", [{"epoch": 1, "elapsed": 1.0, "train_loss": 2.0, "val_loss": 2.2}])
    write_log(tmp_path / "b", [{"epoch": 1, "elapsed": 2.0, "train_loss": 1.5}])  # no validation
    out = plot_runs({"a": read_metrics(tmp_path / "a"), "b": read_metrics(tmp_path / "b")}, tmp_path / "c.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([str(tmp_path / "a"), "--out", str(tmp_path / "d.png")]) == 0 and (tmp_path / "d.png").exists()


def test_plot_cli_bad_input_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no metrics log" in err
