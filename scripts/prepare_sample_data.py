"""Create the bundled sample datasets (normally created on first use): datasets/sample/images and /video."""
import argparse
from pathlib import Path

from vsrkit.data.sample_data import SAMPLE_BUILDERS

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    # checked here, not with argparse's choices: with nargs='*', Python 3.10/3.11 test an empty list (no argument,
    # or a list default on 3.11+) against the choices as one value and reject it
    parser.add_argument('kinds', nargs='*', metavar='KIND',
                        help=f'which sample sets: {", ".join(sorted(SAMPLE_BUILDERS))} (default: all)')
    parser.add_argument('--root', type=Path, default=ROOT / 'datasets' / 'sample', help='where to create them')
    args = parser.parse_args(argv)
    unknown = [kind for kind in args.kinds if kind not in SAMPLE_BUILDERS]
    if unknown:
        parser.error(f'unknown sample set(s) {unknown}; expected some of {sorted(SAMPLE_BUILDERS)}')
    for kind in args.kinds or sorted(SAMPLE_BUILDERS):
        target = args.root / kind
        if target.exists():
            print(f'{target}: already present')
            continue
        SAMPLE_BUILDERS[kind](target)
        print(f'{target}: created')


if __name__ == '__main__':
    main()
