#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite (offline: tiny random-weight pipelines, no model hub).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
# The browser test drives the app in Debian's chromium; install it where this machine can (root with apt-get).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing chromium and chromedriver for the browser test" >&2
    apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null \
      || echo "could not install chromium: the browser test will be skipped" >&2
  else
    echo "chromium/chromedriver missing and not installable here: the browser test will be skipped" >&2
  fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/python -m pytest -q "$@"
