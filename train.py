"""Train a model from a YAML options file: ``python train.py -opt options/vit_x2.yml`` (one process) or
``bash dist_train.sh N options/vit_x2.yml`` (torchrun, N processes). See README.md."""
import sys
from pathlib import Path

from vsrkit.engine.train_loop import main

if __name__ == '__main__':
    sys.exit(main(root=Path(__file__).resolve().parent))
