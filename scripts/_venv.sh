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

# .venv/.sluice-installed holds "<hash of pyproject.toml> <extra> <extra> ...": what the last install put in.
# An install keeps every extra installed before, so switching between scripts/run (no extras) and
# scripts/test (the test extras) installs nothing; only a changed pyproject.toml or a new extra does.
ensure_venv() {
    local wanted="$1" hash line installed_hash extras extra missing=""
    if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
        rm -rf .venv
        "$(find_python)" -m venv .venv
    fi
    hash="$(sha256sum pyproject.toml | cut -c1-16)"
    line="$(cat .venv/.sluice-installed 2>/dev/null || true)"
    installed_hash="${line%% *}"
    extras=""
    [ "$installed_hash" = "$line" ] || extras="${line#* }"
    # Stamps written before extras were listed read "<hash>-<extra>" (or "-base").
    case "$installed_hash" in
        *-*) extras="${installed_hash#*-}"; installed_hash="${installed_hash%%-*}" ;;
    esac
    extras="$(echo "$extras" | tr ' ' '\n' | grep -vx -e '' -e base | sort -u | tr '\n' ' ' || true)"
    for extra in $wanted; do
        case " $extras " in *" $extra "*) ;; *) missing="$missing $extra" ;; esac
    done
    if [ "$installed_hash" = "$hash" ] && [ -z "$missing" ]; then
        return 0
    fi
    extras="$(echo "$extras $missing" | tr ' ' '\n' | grep -vx '' | sort -u | tr '\n' ' ' || true)"
    extras="${extras% }"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".${extras:+[${extras// /,}]}"
    echo "$hash${extras:+ $extras}" > .venv/.sluice-installed
}
