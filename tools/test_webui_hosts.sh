# The webui real-host tier, sourced by `bash tools/test_hosts.sh webui [pytest args...]` (which sets $root, $cache,
# $python and quiet, and runs from the repository root): attnkit driven through the
# pinned sources of Forge, A1111 and SD.Next in ../shared/hosts, in an environment of their own, built once and
# cached (ATTNKIT_HOST_CACHE, default ~/.cache/attnkit-hosts).
#
# The environment holds what those host files import, at the hosts' pins where attnkit meets them:
# - transformers 4.46.1 and huggingface-hub 0.26.2, diffusers 0.31.0 (Forge's requirements_versions.txt), with gguf,
#   einops, omegaconf and psutil for Forge's `backend` and the ldm modules A1111 clones;
# - transformers 4.30.2 (A1111's pin, with its tokenizers 0.13.3) beside it in a folder of its own, put first on
#   PYTHONPATH by the tests that load a tokenizer under it (one interpreter holds one transformers);
# - gradio 3.43.2 (SD.Next's; A1111 pins 3.41.2) for the script's real controls and SD.Next's paste handler;
# - open-clip-torch 2.20.0 (both webuis' pin) without its dependencies: its tokenizer is what A1111 SD 2.x uses.
# CPU torch as everywhere (tools/constraints.txt). Nothing is downloaded at test time (HF_HUB_OFFLINE).
hosts="$root/../shared/hosts"
missing=()
for h in forge a1111 sdnext; do [ -d "$hosts/$h/modules" ] || missing+=("$h"); done
if [ ${#missing[@]} -eq 3 ]; then
  echo "webui tier skipped: ../shared/hosts/{forge,a1111,sdnext} (the pinned webui sources) are not here"
  exit 0
fi
hosts=$(cd "$hosts" && pwd)
mkdir -p "$cache"
venv="$cache/webui-venv"
old_transformers="$cache/webui-transformers-4.30"

# --- the environment (rebuilt only when its inputs change)
want=$( (cat requirements.txt tools/constraints.txt; sed -n '/^# --- the environment/,/^# --- end/p' "${BASH_SOURCE[0]}") \
  | sha256sum | cut -c1-16)
if [ "$(cat "$venv/.attnkit-setup" 2>/dev/null)" != "$want" ]; then
  echo "setting up the webui test environment in $venv (first run: a few minutes)" >&2
  rm -rf "$venv" "$old_transformers"
  "$python" -m venv "$venv"
  pip=(quiet "$venv/bin/python" -m pip install -q --disable-pip-version-check -c tools/constraints.txt)
  "${pip[@]}" --upgrade pip
  "${pip[@]}" torch transformers==4.46.1 huggingface-hub==0.26.2 diffusers==0.31.0 "numpy<2" gguf einops omegaconf \
    psutil gradio==3.43.2 rich pytest -r requirements.txt
  "${pip[@]}" --no-deps open-clip-torch==2.20.0
  "${pip[@]}" --no-deps --target "$old_transformers" transformers==4.30.2 tokenizers==0.13.3
  echo "$want" > "$venv/.attnkit-setup"
fi
# --- end

export ATTNKIT_HOSTS="$hosts" ATTNKIT_TRANSFORMERS_430="$old_transformers" ATTNKIT_ROOT="$root"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False PYTHONPYCACHEPREFIX="$cache/pycache"
cd "$root/tests/real_hosts/webui"
"$venv/bin/python" -m pytest -c pytest.ini "$@"
