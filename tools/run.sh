#!/usr/bin/env bash
# Set up .venv if needed, then run the main job: generate an image with attention maps (built-in tiny model unless
# --model is given). Extra arguments go to `attnkit generate` and override the defaults below.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
mkdir -p outputs
export GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/attnkit generate --prompt "a red car and a white sheep on a green meadow" \
  --method observe --words "red car,white sheep,meadow" --out outputs/out.png --maps outputs/maps.png \
  --report outputs/report.json "$@"
