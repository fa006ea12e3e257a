"""Train charlm's char-level LSTM on a book.

    python train.py                                  # the tutorial's small net on Alice
    python train.py --layers 2                       # ... with two LSTM layers
    python train.py --preset seed-big --text my.txt  # the tutorial's larger net on your text
"""

from charlm.cli import train_entry

if __name__ == "__main__":
    train_entry()
