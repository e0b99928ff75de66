"""Standalone attnkit app: ``python extension.py [--model SOURCE] [--port N] [--listen] [--share]``."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="attnkit: cross-attention control in a Gradio app")
    parser.add_argument("--model", default="tiny-sd15",
                        help="tiny-sd15 | tiny-sdxl | tiny-flux | a diffusers folder | a .safetensors file | a hub id")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--listen", action="store_true", help="bind all interfaces instead of 127.0.0.1")
    parser.add_argument("--share", action="store_true", help="ask Gradio for a public share link")
    parser.add_argument("--presets", help="folder of user presets (default: ~/.config/attnkit/presets)")
    parser.add_argument("--lock-model", action="store_true",
                        help="serve only --model (set automatically with --listen or --share)")
    args = parser.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from attnkit.ui.panel import build_app

    demo = build_app(default_model=args.model, preset_dir=args.presets,
                     lock_model=args.lock_model or args.listen or args.share)
    demo.queue().launch(server_name="0.0.0.0" if args.listen else "127.0.0.1", server_port=args.port,
                        share=args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
