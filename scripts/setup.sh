#!/usr/bin/env bash
# Create (or update) the project's virtual environment with everything the
# demo, the plugin and the tests need. Safe to run again: pip skips what is there.
#
# torch + torchvision are installed as one matching pair first. timm imports
# torchvision, and PyPI's torchvision only works beside the full torch build of
# the same release, so we never mix a CPU-only torch wheel with it. The pair
# below works on CPU-only machines and uses CUDA when a GPU is present.
# Override with TORCH_SPEC, e.g. TORCH_SPEC="torch==2.9.1 torchvision==0.24.1" on aarch64.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${HISTOSGE_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install --quiet $TORCH_SPEC
"$VENV/bin/python" -m pip install --quiet -e ".[test]"
# The project uses PyQt6, as napari recommends. An environment made before still holds PyQt5,
# which qtpy would pick first (and napari then shows its PyQt5 deprecation warning).
if "$VENV/bin/python" -m pip show --quiet PyQt5 >/dev/null 2>&1; then
    echo "setup: removing PyQt5 (napari deprecates it; the project uses PyQt6)"
    "$VENV/bin/python" -m pip uninstall --quiet -y PyQt5 PyQt5-Qt5 PyQt5_sip
fi
"$VENV/bin/python" -c "import torch, torchvision, timm, napari_histosge; print(f'setup: torch {torch.__version__} (cuda: {torch.cuda.is_available()}), timm {timm.__version__}, napari-histosge {napari_histosge.__version__}')"
