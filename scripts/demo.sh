#!/usr/bin/env bash
# Set up the environment and run the offline demo (generated slide with known ground truth).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
"${HISTOSGE_VENV:-.venv}/bin/histosge" demo "$@"
