"""Prompt styles, negative-prompt presets and saved settings (the built-in library lives here too)."""
