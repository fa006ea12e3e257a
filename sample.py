"""Generate text from a checkpoint written by train.py.

    python sample.py --ckpt checkpoints                       # seed window + 1,000 chars, argmax
    python sample.py --ckpt checkpoints --temperature 0.8 --prime "alice was"
"""

from charlm.cli import sample_entry

if __name__ == "__main__":
    sample_entry()
