#!/usr/bin/env bash
# Build the one-folder bundle: dist/eyetriage/eyetriage (run from anywhere; `make package`).
#   BUILD_PYTHON=... interpreter with EyeTriage installed (default: .venv/bin/python)
#   DISTPATH=...    output folder (default: dist)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${BUILD_PYTHON:-$ROOT/.venv/bin/python}"
DISTPATH="${DISTPATH:-$ROOT/dist}"
WORKPATH="$ROOT/build/pyinstaller"

if ! "$PY" -c 'import PyInstaller' 2>/dev/null; then
    echo "installing the packaging extra (PyInstaller)"
    "$PY" -m pip install --quiet -e ".[package]"
fi

start=$(date +%s)
"$PY" -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath "$DISTPATH" --workpath "$WORKPATH" packaging/eyetriage.spec
elapsed=$(( $(date +%s) - start ))

exe="$DISTPATH/eyetriage/eyetriage"
test -x "$exe" || { echo "build failed: $exe missing" >&2; exit 1; }
"$exe" --version
printf 'built %s in %dm%02ds, size %s\n' "$exe" $((elapsed / 60)) $((elapsed % 60)) \
    "$(du -sh "$DISTPATH/eyetriage" | cut -f1)"
