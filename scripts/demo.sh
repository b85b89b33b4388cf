#!/usr/bin/env bash
# Set up the environment and run the offline demo (generated slide with known ground truth).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
venv="${HISTOSGE_VENV:-.venv}"
"$venv/bin/histosge" demo "$@"
echo "napari is installed in $venv only: run 'source $venv/bin/activate' first, then the napari command above (or call $venv/bin/napari directly)."
