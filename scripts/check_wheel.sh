#!/usr/bin/env bash
# A plain install, as a user makes it: build the wheel, install it into an environment that
# already holds napari, and check that npe2 discovers the plugin, its manifest validates,
# pip finds no broken requirement and napari opens the plugin's offline sample headless.
#
# By default the napari environment is made fresh in a temporary folder (napari with PyQt6
# and the torch pair, then the wheel; several minutes, most of them installing torch).
# With HISTOSGE_WHEEL_VENV set, that environment is kept there and reused by later runs, as a
# user's napari environment is: each run removes napari-histosge from it and installs the new
# wheel with whatever it requires (scripts/test.sh does this). HISTOSGE_WHEEL_FRESH=1 rebuilds it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/histosge-wheel.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
VENV="${HISTOSGE_WHEEL_VENV:-$WORK/venv}"
start=$SECONDS
step() { echo "check_wheel: [$((SECONDS - start)) s] $*"; }

step "building the wheel"
# The project's environment has setuptools and wheel: building there needs no index (an isolated
# build fetches setuptools first, and a slow index can stall it for minutes).
BUILD_PY="${HISTOSGE_VENV:-.venv}/bin/python"
if [ -x "$BUILD_PY" ] && "$BUILD_PY" -c "import setuptools, wheel" >/dev/null 2>&1; then
    "$BUILD_PY" -m pip wheel --quiet --no-deps --no-build-isolation . -w "$WORK/dist"
else
    "$PYTHON" -m pip wheel --quiet --no-deps . -w "$WORK/dist"
fi
wheel="$(ls "$WORK"/dist/napari_histosge-*.whl)"
# The manifest must travel inside the wheel, or napari never sees the plugin.
"$PYTHON" -c "import sys, zipfile; sys.exit('napari_histosge/napari.yaml' not in zipfile.ZipFile(sys.argv[1]).namelist())" \
    "$wheel" || { echo "check_wheel: $wheel has no napari_histosge/napari.yaml" >&2; exit 1; }

PY="$VENV/bin/python"
if [ "${HISTOSGE_WHEEL_FRESH:-0}" != 1 ] && [ -n "${HISTOSGE_WHEEL_VENV:-}" ] \
        && "$PY" -c "import napari, torch" >/dev/null 2>&1; then
    step "reusing the napari environment $VENV; replacing napari-histosge in it"
    "$PY" -m pip uninstall --quiet -y napari-histosge
else
    step "a fresh environment with napari (the user's) in $VENV"
    "$PYTHON" -m venv --clear "$VENV"
    "$PY" -m pip install --quiet --upgrade pip
    # shellcheck disable=SC2086
    "$PY" -m pip install --quiet "napari[pyqt6]" $TORCH_SPEC
fi
step "installing the wheel"
"$PY" -m pip install --quiet "$wheel"
"$PY" -m pip check

step "npe2 discovers and validates the plugin"
plugins="$("$PY" -m npe2 list)"
grep -q "napari-histosge" <<<"$plugins" \
    || { echo "check_wheel: npe2 list does not show napari-histosge" >&2; echo "$plugins" >&2; exit 1; }
"$PY" -m npe2 validate napari-histosge

step "napari opens the plugin's demo sample headless"
run_headless=()
if [ -z "${DISPLAY:-}" ] && command -v xvfb-run >/dev/null 2>&1; then
    run_headless=(xvfb-run -a)
fi
HISTOSGE_CACHE="$WORK/cache" "${run_headless[@]}" "$PY" - <<'EOF'
import napari

viewer = napari.Viewer(show=False)
layers = viewer.open_sample("napari-histosge", "demo")
kinds = sorted({type(layer).__name__ for layer in layers})
assert "Image" in kinds and "Points" in kinds, kinds
print(f"check_wheel: the demo sample opened as {len(layers)} layers ({', '.join(kinds)})")
viewer.close()
EOF
"$VENV/bin/histosge" --help >/dev/null \
    || { echo "check_wheel: the histosge command does not run" >&2; exit 1; }
step "ok"
