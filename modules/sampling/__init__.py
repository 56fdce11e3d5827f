"""Noise schedule, conditioning as ComfyUI combines it, the one DDIM loop, guidance wrappers and context windows."""
