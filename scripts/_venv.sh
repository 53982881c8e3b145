# Sourced by the scripts: make sure .venv exists and holds this project.
# Reinstalls when pyproject.toml changed since the last install; need_extra installs an optional
# extra (pyproject.toml) when its module is missing.
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
  echo "setting up $venv (pyzmq, msgpack, numpy, rich, pytest) ..." >&2
  "$py" -m venv "$venv"
  if ! "$venv/bin/python" -m pip install --disable-pip-version-check -e "$root[test]" \
      >"$venv/install.log" 2>&1; then
    tail -n 30 "$venv/install.log" >&2
    echo "installing vpmu-emu into $venv failed; full log: $venv/install.log" >&2
    exit 2
  fi
  echo "$want" > "$stamp"
fi

need_extra() {   # need_extra EXTRA MODULE: install vpmu-emu[EXTRA] into .venv unless MODULE imports
  if ! "$venv/bin/python" -c "import $2" 2>/dev/null; then
    echo "installing the $1 extra into $venv ($2) ..." >&2
    if ! "$venv/bin/python" -m pip install --disable-pip-version-check -e "$root[test,$1]" \
        >"$venv/install-$1.log" 2>&1; then
      tail -n 30 "$venv/install-$1.log" >&2
      echo "installing vpmu-emu[$1] into $venv failed; full log: $venv/install-$1.log" >&2
      exit 2
    fi
  fi
}
