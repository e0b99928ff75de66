#!/usr/bin/env bash
# Real-host test tiers: attnkit run inside the hosts' own code, from the pinned sources in ../shared/hosts.
#
#   bash tools/test_hosts.sh comfyui [pytest args...]
#   bash tools/test_hosts.sh webui [pytest args...]
#
# comfyui: ComfyUI (../shared/hosts/ComfyUI, v0.3.64) in an environment of its own, built once and cached
# (ATTNKIT_HOST_CACHE, default ~/.cache/attnkit-hosts): CPU torch (tools/constraints.txt), ComfyUI's requirements,
# then attnkit installed the way ComfyUI-Manager installs a pack (a copy of this tree in custom_nodes/attnkit,
# `pip install -r requirements.txt`, `python install.py`). Graphs run through ComfyUI's own executor, with a
# random-weight SD 1.5 checkpoint that ComfyUI's own detection accepts (built by the tests, cached).
#
# What differs from a user's ComfyUI, and why:
# - transformers 4.57 (what ComfyUI v0.3.64 installed when it was released, 2025-10): its CLIPTokenizer is the slow
#   Python one that ComfyUI hands to nodes, the case attnkit must handle.
# - torchvision is replaced by an import-only stand-in (tests/real_hosts/comfyui/shims): ComfyUI imports it at
#   import time, the registry here has only CUDA builds of it (they do not load beside the CPU torch, and a CUDA
#   torch to match is several GB), and no SD 1.x/SDXL code path calls it. spandrel (which requires torchvision;
#   only upscale-model nodes use it) and the web frontend packages (the tier drives the executor, not the browser
#   UI) are left out.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tier=${1:-}
[ $# -gt 0 ] && shift
case "$tier" in
  comfyui|webui) ;;
  *) echo "usage: bash tools/test_hosts.sh comfyui|webui [pytest args...]" >&2; exit 2 ;;
esac

# what every tier shares: the environment cache, the interpreter, quiet pip
cache=${ATTNKIT_HOST_CACHE:-$HOME/.cache/attnkit-hosts}
python=${PYTHON:-python3}
quiet() {  # run a pip command without the registry mirror's "Location ... is ignored" lines
  "$@" 2>&1 | { grep -v "is ignored" || true; } >&2
  return "${PIPESTATUS[0]}"
}

if [ "$tier" = webui ]; then
  . tools/test_webui_hosts.sh  # Forge, A1111 and SD.Next (see that file)
  exit
fi

host="$root/../shared/hosts/ComfyUI"
if [ ! -f "$host/execution.py" ]; then
  echo "comfyui tier skipped: ../shared/hosts/ComfyUI (the pinned ComfyUI source) is not here"
  exit 0
fi
host=$(cd "$host" && pwd)
mkdir -p "$cache"
venv="$cache/comfyui-venv"

#: the transformers ComfyUI v0.3.64 was installed with (see above); held when the pack's requirements install too
transformers_pin="transformers<5"

# --- the environment (rebuilt only when its inputs change)
want=$( (cat "$host/requirements.txt" requirements.txt tools/constraints.txt; sed -n '/^# --- the environment/,/^# --- end/p' "$0") \
  | sha256sum | cut -c1-16)
if [ "$(cat "$venv/.attnkit-setup" 2>/dev/null)" != "$want" ]; then
  echo "setting up the ComfyUI test environment in $venv (first run: about two minutes)" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  pip=(quiet "$venv/bin/python" -m pip install -q --disable-pip-version-check -c tools/constraints.txt)
  "${pip[@]}" --upgrade pip
  # ComfyUI's requirements less torchvision/torchaudio (see above), spandrel and the frontend packages
  grep -vE '^\s*(#|$)|^(torch|torchvision|torchaudio|spandrel|comfyui-frontend-package|comfyui-workflow-templates|comfyui-embedded-docs)\b' \
    "$host/requirements.txt" > "$cache/comfyui-requirements.txt"
  "${pip[@]}" torch "$transformers_pin" -r "$cache/comfyui-requirements.txt" pytest
  echo "$want" > "$venv/.attnkit-setup"
fi
# --- end

# --- the pack, installed as ComfyUI-Manager installs it: a copy of the tree, its requirements, its install.py
base=$(mktemp -d "${TMPDIR:-/tmp}/attnkit-comfyui.XXXXXX")
trap 'rm -rf "$base"' EXIT
pack="$base/custom_nodes/attnkit"
mkdir -p "$pack"
git ls-files -co --exclude-standard | while IFS= read -r f; do [ -e "$f" ] && printf '%s\n' "$f"; done \
  | tar -cf - -T - | tar -xf - -C "$pack"
test -f "$pack/__init__.py" -a -f "$pack/requirements.txt"
quiet "$venv/bin/python" -m pip install -q --disable-pip-version-check -c tools/constraints.txt \
  -r "$pack/requirements.txt" "$transformers_pin"
(cd "$pack" && "$venv/bin/python" install.py)

export ATTNKIT_COMFYUI="$host" ATTNKIT_COMFYUI_BASE="$base" ATTNKIT_HOST_CACHE="$cache"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPYCACHEPREFIX="$cache/pycache"
export PYTHONPATH="$root/tests/real_hosts/comfyui/shims"
cd "$root/tests/real_hosts/comfyui"
"$venv/bin/python" -m pytest -c pytest.ini "$@"
