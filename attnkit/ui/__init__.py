"""User-interface pieces: the field table (no UI library needed) and the Gradio panel (gradio imported inside)."""
