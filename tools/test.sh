#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite (offline: tiny random-weight pipelines, no model hub).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/python -m pytest -q "$@"
