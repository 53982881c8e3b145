# Sourced by scripts/launch and scripts/test: make sure .venv exists and holds this project.
# Reinstalls when pyproject.toml changed since the last install.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.vpmu-installed"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  py="${PYTHON:-python3}"
  if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "vpmu-emu needs Python 3.11 or newer ($py is $("$py" --version 2>&1))" >&2
    exit 2
  fi
  echo "setting up $venv (pyzmq, msgpack, numpy; pytest, dask, pyarrow for the tests) ..." >&2
  "$py" -m venv "$venv"
  if ! "$venv/bin/python" -m pip install --disable-pip-version-check -e "$root[test]" \
      >"$venv/install.log" 2>&1; then
    tail -n 30 "$venv/install.log" >&2
    echo "installing vpmu-emu into $venv failed; full log: $venv/install.log" >&2
    exit 2
  fi
  echo "$want" > "$stamp"
fi
