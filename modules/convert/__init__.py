"""ComfyUI/LDM <-> diffusers layouts (UNet, VAE, CLIP text), single-file checkpoints, base-model identity."""
