"""Noise schedule, conditioning as ComfyUI combines it, the one DDIM loop and its guidance wrappers."""
