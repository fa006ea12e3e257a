import numpy as np
import pytest

from charlm import data
from charlm.config import make_run_config
from charlm.data import Vocab
from charlm.errors import CharlmError
from charlm.dataset import prepare_corpus, summary_lines


def test_vocab_is_sorted_distinct_chars_and_round_trips():
    vocab = Vocab.from_text("hello, world")
    assert vocab.chars == " ,dehlorw"
    ids = vocab.encode("hello, world")
    assert ids.dtype == np.int32 and ids.tolist() == [4, 3, 5, 5, 6, 1, 0, 8, 6, 7, 5, 2]
    assert vocab.decode(ids) == "hello, world"


def test_vocab_handles_non_ascii():
    text = "fée – ünïcode ✓ 漢字"
    vocab = Vocab.from_text(text)
    assert vocab.decode(vocab.encode(text)) == text


def test_encode_names_unknown_chars():
    with pytest.raises(CharlmError, match=r"2 char\(s\) not in the model's vocabulary: 'x', 'z'"):
        Vocab("abc").encode("abxz")


def tutorial_windows(ids, seq_length):
    """The tutorial's list comprehension, verbatim in spirit: dataX, dataY."""
    dataX, dataY = [], []
    for i in range(0, len(ids) - seq_length, 1):
        dataX.append(list(ids[i:i + seq_length]))
        dataY.append(ids[i + seq_length])
    return dataX, dataY


def test_windows_equal_the_tutorials():
    text = "the quick brown fox jumps over the lazy dog"
    vocab = Vocab.from_text(text)
    ids = vocab.encode(text)
    X, Y = tutorial_windows(ids, 7)
    starts = data.window_starts(len(ids), 7)
    assert len(starts) == len(X) == data.num_windows(len(ids), 7)
    batch = data.gather_batch(ids, starts, 7)
    assert batch["inputs"].tolist() == X
    assert batch["targets"][:, -1].tolist() == list(Y)
    # dense targets: every position's next char
    assert (batch["targets"][:, :-1] == batch["inputs"][:, 1:]).all()


def test_window_stride():
    assert data.window_starts(20, 5, 3).tolist() == [0, 3, 6, 9, 12]
    assert data.num_windows(6, 5) == 1 and data.num_windows(5, 5) == 0


def test_check_long_enough():
    data.check_long_enough(11, 10)
    with pytest.raises(CharlmError, match="too short for one window"):
        data.check_long_enough(10, 10)


def test_gather_batch_pads_to_batch_size_with_zero_weights():
    ids = np.arange(30, dtype=np.int32)
    batch = data.gather_batch(ids, np.array([3, 7]), 4, batch_size=5)
    assert batch["inputs"].shape == (5, 4) and batch["targets"].shape == (5, 4)
    assert batch["weights"].shape == (5, 4)
    assert batch["weights"].tolist() == [[1] * 4] * 2 + [[0] * 4] * 3
    assert batch["inputs"][1].tolist() == [7, 8, 9, 10] and batch["targets"][1].tolist() == [8, 9, 10, 11]


def test_shuffle_is_deterministic_per_seed_and_epoch():
    starts = np.arange(1000)
    a = data.shuffled(starts, 0, 1)
    assert (a == data.shuffled(starts, 0, 1)).all()
    assert not (a == data.shuffled(starts, 0, 2)).all()
    assert not (a == data.shuffled(starts, 1, 1)).all()
    assert sorted(a.tolist()) == starts.tolist()


def test_seed_windows():
    ids = np.arange(50, dtype=np.int32)
    seeds = data.seed_windows(ids, 10, 3, seed=0)
    assert len(seeds) == 3 and all(len(s) == 10 for s in seeds)
    assert all((np.diff(s) == 1).all() for s in seeds)


@pytest.mark.parametrize("strip, expected", [(True, (144433, 45, 144333)), (False, (144512, 45, 144412))])
def test_tutorial_summary_counts_on_alice(wonderland_path, strip, expected):
    cfg = make_run_config(strip=strip)
    corpus = prepare_corpus(wonderland_path.read_text(encoding="utf-8"), cfg)
    assert summary_lines(corpus, cfg) == [f"Total Characters: {expected[0]}", f"Total Vocab: {expected[1]}",
                                          f"Total Patterns: {expected[2]}"]


def test_prepare_corpus_rejects_short_text():
    with pytest.raises(CharlmError, match="too short"):
        prepare_corpus("short text", make_run_config())


def test_strip_punctuation_removes_unicode_punctuation():
    from charlm.corpus import clean_text
    assert clean_text("Well, 'Alice'—said the Cat… (yes)!", strip_punctuation=True) == "well alicesaid the cat yes"
    assert prepare_corpus("A, b. " * 40, make_run_config(strip_punctuation=True, seq_length=5)).vocab.chars == " ab"


def test_sentence_windows():
    text = "Hello there. How are you? I am fine. A very long sentence indeed goes on."
    starts, lengths = data.sentence_windows(text, 10)
    assert [text[s:s + l] for s, l in zip(starts, lengths)] == ["Hello there", "How are you", "I am fine. ",
                                                               "A very long"]
    ids = Vocab.from_text(text).encode(text)
    batch = data.gather_batch(ids, starts[2:3], 10, lengths=lengths[2:3])
    assert batch["weights"][0].tolist() == [1] * 10  # "I am fine. " is 11 tokens: 10 inputs, 10 targets
    starts, lengths = data.sentence_windows("Hi. Yo. ", 10)
    batch = data.gather_batch(Vocab.from_text("Hi. Yo. ").encode("Hi. Yo. "), starts, 10, lengths=lengths)
    # "Hi. " + its next char "Y": 4 targets; the last sentence has no next char: 3; the rest is masked
    assert batch["weights"].sum(axis=1).tolist() == [4, 3]


def test_split_point_holds_out_the_contiguous_tail():
    assert data.split_point(144433, 0.1) == 129989  # 14,444 val chars, as the compressor baseline
    assert data.split_point(100, 0.0) == 100


def test_stream_starts_cut_the_text_into_contiguous_streams():
    starts = data.stream_starts(101, 4, 5)
    assert starts.shape == (5, 4)
    assert starts[:, 0].tolist() == [0, 5, 10, 15, 20] and starts[0].tolist() == [0, 25, 50, 75]
    assert starts.max() + 5 + 1 <= 101
    with pytest.raises(CharlmError, match="too short"):
        data.stream_starts(20, 4, 5)


@pytest.mark.parametrize("mode", [{}, {"objective": "all"}, {"objective": "all", "stateful": True, "batch_size": 8},
                                  {"objective": "all", "windowing": "sentences"}])
def test_no_val_char_is_in_any_training_window(wonderland_path, mode):
    from charlm.dataset import training_windows
    cfg = make_run_config(val_frac=0.1, **mode)
    corpus = prepare_corpus(wonderland_path.read_text(encoding="utf-8"), cfg)
    w = training_windows(corpus, cfg)
    if w.streams:
        starts, span = np.stack([w.stream_row(k) for k in range(w.count)]), cfg.data.seq_length + 1
    elif w.starts is not None:
        starts, span = w.starts, w.lengths
    else:
        starts, span = w.window_starts(np.arange(w.count))[0], cfg.data.seq_length + 1
    last_index = np.max(np.ravel(starts) + np.ravel(span) - 1)
    assert corpus.split == 129989 and last_index < corpus.split
