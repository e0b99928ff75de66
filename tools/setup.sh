#!/usr/bin/env bash
# Make (or reuse) the virtual environment .venv at the repository root and install attnkit into it.
# Re-installs only when pyproject.toml, the constraints or this script changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.attnkit-setup
want=$(cat pyproject.toml tools/constraints.txt tools/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up .venv (first run takes a minute or two)" >&2
  pip=(.venv/bin/python -m pip install -q --disable-pip-version-check -c tools/constraints.txt)
  "${pip[@]}" --upgrade pip
  "${pip[@]}" torch
  "${pip[@]}" -e ".[dev,ui]"
  # Only the CLIP vocabulary file of open-clip-torch is used (offline tokenizer); its dependencies must not come.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps open-clip-torch
  echo "$want" > "$stamp"
fi
