# Sourced by scripts/run and scripts/test: find Python >= 3.12 and keep .venv installed with "$1" extras.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3 python3.12 python3.13 python; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
    done
    echo "sluice needs Python >= 3.12 (mitmproxy 12). Install it, or set PYTHON=/path/to/python3.12." >&2
    return 1
}

ensure_venv() {
    local extras="$1" stamp
    if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
        rm -rf .venv
        "$(find_python)" -m venv .venv
    fi
    stamp="$(cat pyproject.toml | sha256sum | cut -c1-16)-${extras:-base}"
    installed="$(cat .venv/.sluice-installed 2>/dev/null || true)"
    # Installed with extras includes the base install: running the proxy needs no reinstall after the tests.
    if [ -z "$extras" ] && [ "${installed%-*}" = "${stamp%-*}" ]; then
        return 0
    fi
    if [ "$installed" != "$stamp" ]; then
        .venv/bin/python -m pip install --quiet --upgrade pip
        .venv/bin/python -m pip install --quiet -e ".${extras:+[$extras]}"
        echo "$stamp" > .venv/.sluice-installed
    fi
}
