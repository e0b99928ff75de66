#!/usr/bin/env bash
# Set up .venv if needed, then run the main job: the attnkit app on http://127.0.0.1:7860 (the built-in shapes
# model unless --model is given). Extra arguments go to extension.py (--model, --port, --listen, --share, --presets).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/python extension.py "$@"
