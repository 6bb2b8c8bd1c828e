"""Create the bundled sample datasets (normally created on first use): datasets/sample/images and /video."""
import argparse
from pathlib import Path

from vsrkit.data.sample_data import SAMPLE_BUILDERS

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('kinds', nargs='*', default=sorted(SAMPLE_BUILDERS), choices=sorted(SAMPLE_BUILDERS))
    parser.add_argument('--root', type=Path, default=ROOT / 'datasets' / 'sample', help='where to create them')
    args = parser.parse_args()
    for kind in args.kinds:
        target = args.root / kind
        if target.exists():
            print(f'{target}: already present')
            continue
        SAMPLE_BUILDERS[kind](target)
        print(f'{target}: created')


if __name__ == '__main__':
    main()
