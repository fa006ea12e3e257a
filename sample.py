"""Generate text from a checkpoint written by train.py.

    python sample.py --ckpt checkpoints                       # seed window + 1,000 chars, argmax
    python sample.py --ckpt checkpoints --temperature 0.8 --top-p 0.95 --prime "alice was"
    python sample.py --ckpt checkpoints --interactive         # type primes, get continuations
"""

from charlm.sample import entry

if __name__ == "__main__":
    entry()
