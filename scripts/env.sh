# Sourced by run_all.sh and run_tests.sh: use the active virtual environment if there is one,
# otherwise create (once) and activate ./.venv with the exact versions of requirements.txt.
# The environment is reinstalled only when requirements.txt changes.
if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ]; then
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  venv="$root/.venv"
  python="${MIRL_PYTHON:-python3}"
  if [ ! -x "$venv/bin/python" ]; then
    echo "mirl: creating the virtual environment $venv" >&2
    "$python" -m venv "$venv"
  fi
  stamp="$venv/.requirements.sha256"
  want="$(sha256sum "$root/requirements.txt" | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "mirl: installing the pinned requirements into $venv (first run only)" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/requirements.txt"
    echo "$want" > "$stamp"
  fi
  # shellcheck disable=SC1091
  source "$venv/bin/activate"
fi
export PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
