"""Standalone attnkit app: ``python extension.py [--model SOURCE] [--port N] [--listen] [--share]``."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="attnkit: cross-attention control in a Gradio app")
    parser.add_argument("--model", default="shapes",
                        help="shapes (default: the built-in model of coloured shapes) | tiny-sd15 | tiny-sdxl | "
                             "tiny-flux | a diffusers folder | a .safetensors file | a hub id")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--listen", action="store_true", help="bind all interfaces instead of 127.0.0.1")
    parser.add_argument("--share", action="store_true", help="ask Gradio for a public share link")
    parser.add_argument("--presets", help="folder of user presets (default: ~/.config/attnkit/presets)")
    parser.add_argument("--models", help="folder whose diffusers folders and .safetensors files the model chooser "
                                         "lists (default: $ATTNKIT_MODELS or ~/.config/attnkit/models)")
    parser.add_argument("--lock-model", action="store_true",
                        help="serve only --model (set automatically with --listen or --share)")
    args = parser.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from attnkit.ui.panel import build_app

    demo = build_app(default_model=args.model, preset_dir=args.presets, models_folder=args.models,
                     lock_model=args.lock_model or args.listen or args.share)
    # Gradio's own banner tells people to "set share=True in launch()"; this app's users have flags instead
    demo.queue().launch(server_name="0.0.0.0" if args.listen else "127.0.0.1", server_port=args.port,
                        share=args.share, quiet=True, prevent_thread_lock=True)
    print(f"attnkit app: {demo.local_url}", flush=True)
    if getattr(demo, "share_url", None):
        print(f"public link: {demo.share_url}", flush=True)
    elif not args.listen:
        print("only this machine can open it: add --listen for your network or --share for a public link",
              flush=True)
    print("press Ctrl+C to stop", flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        demo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
