"""charlm: the classic char-level LSTM text generator, as a JAX/Flax library.

Every step of train.py and sample.py is a plain function here:

    import charlm
    raw = charlm.read_text("wonderland.txt")
    cfg = charlm.make_run_config("seed-small", epochs=1)
    result = charlm.train(raw, cfg, "checkpoints")
    state, cfg, vocab, meta = charlm.restore("checkpoints")
    print(charlm.generate(state.params, cfg, vocab, meta["seeds"][0], length=200)[0])
"""

from charlm.config import DataConfig, ModelConfig, PRESETS, RunConfig, TrainConfig, make_run_config
from charlm.errors import CharlmError
from charlm.corpus import clean_text, download_gutenberg, read_text, resolve_corpus, strip_gutenberg
from charlm.data import Vocab, gather_batch, shuffled, window_starts
from charlm.model import CharLSTM, init_params, zero_carry
from charlm.training import TrainState, create_train_state, eval_step, train_step
from charlm.checkpoint import BestCheckpoint, read_meta, restore
from charlm.trainer import Corpus, TrainResult, prepare_corpus, train
from charlm.sampling import generate, generate_stateful, generate_window, sample_next

__version__ = "0.1.0"
