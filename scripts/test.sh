#!/usr/bin/env bash
# Set up the environment, lint (ruff) and type-check (mypy) the code, check the built wheel
# installs into a napari environment (scripts/check_wheel.sh; HISTOSGE_SKIP_WHEEL_CHECK=1
# skips it), then run the whole test suite, widget tests included. Extra arguments go to pytest.
# napari's canvas needs OpenGL: the widget tests run on a virtual X server
# (Xvfb, started by pytest-xvfb) with Mesa's software OpenGL.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=0
command -v Xvfb >/dev/null 2>&1 || need_apt=1
[ -e /usr/lib/x86_64-linux-gnu/libxcb-cursor.so.0 ] || [ -e /usr/lib/aarch64-linux-gnu/libxcb-cursor.so.0 ] || need_apt=1
if [ "$need_apt" = 1 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "test: installing Xvfb, Mesa OpenGL and the xcb libraries Qt needs"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            xvfb libgl1-mesa-dri libegl1 libgl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 \
            libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 \
            libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1 libxi6 libxrender1 >/dev/null
    else
        echo "test: Xvfb and Qt's xcb libraries are missing; install them (README, \"Two commands on a fresh machine\") or run as root" >&2
        exit 1
    fi
fi

bash scripts/setup.sh
PY="${HISTOSGE_VENV:-.venv}/bin/python"
# Settings live in pyproject.toml ([tool.ruff], [tool.mypy]); either failing stops the run.
echo "test: ruff check src tests"
"$PY" -m ruff check src tests
echo "test: mypy (src/napari_histosge)"
"$PY" -m mypy
# A plain install: the wheel into a napari environment of its own, kept between runs
# (the first run makes it, several minutes; later ones replace only the wheel).
if [ "${HISTOSGE_SKIP_WHEEL_CHECK:-0}" != 1 ]; then
    echo "test: the wheel in a napari environment (scripts/check_wheel.sh)"
    HISTOSGE_WHEEL_VENV="${HISTOSGE_WHEEL_VENV:-$HOME/.cache/napari-histosge/wheel-check-venv}" \
        bash scripts/check_wheel.sh
fi
# setup.sh installed the [test] extras: their tests must run, not skip
export HISTOSGE_REQUIRE_EXTRAS="${HISTOSGE_REQUIRE_EXTRAS:-1}"
exec "$PY" -m pytest "$@"
