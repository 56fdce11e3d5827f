"""The TuneVideo engine: torch, diffusers, peft, einops, safetensors; never ComfyUI. Map: docs/ARCHITECTURE.md."""
