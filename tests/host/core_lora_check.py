"""Run inside a ComfyUI checkout's Python: apply a spatial LoRA file to a checkpoint's MODEL with ComfyUI's own LoRA
code (key mapping, patching) and print what matched as JSON. Used by tests/test_comfyui_host.py.

    python core_lora_check.py COMFYUI_PATH CHECKPOINT LORA
"""

import json
import sys

comfy_path, ckpt, lora_path = sys.argv[1:4]
sys.path.insert(0, comfy_path)
import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True
import comfy.lora  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.utils  # noqa: E402
import torch  # noqa: E402

model = comfy.sd.load_checkpoint_guess_config(ckpt, output_vae=False, output_clip=False)[0]
lora = comfy.utils.load_torch_file(lora_path)
key_map = comfy.lora.model_lora_keys_unet(model.model, {})
patches = comfy.lora.load_lora(lora, key_map)
pairs = [k[: -len(".lora_down.weight")] for k in lora if k.endswith(".lora_down.weight")]
unmapped = [p for p in pairs if p not in key_map]
before = {k: v.clone() for k, v in model.model.state_dict().items()}
patched = model.clone()
patched.add_patches(patches, 1.0)
patched.patch_model()
after = patched.model.state_dict()
errors = []
for stem in pairs:
    if stem not in key_map:
        continue
    target = key_map[stem]
    down, up = lora[f"{stem}.lora_down.weight"].float(), lora[f"{stem}.lora_up.weight"].float()
    scale = float(lora[f"{stem}.alpha"]) / down.shape[0] if f"{stem}.alpha" in lora else 1.0
    want = (scale * up @ down).reshape(before[target].shape)
    errors.append(float((after[target].float() - before[target].float() - want).abs().max()))
sys.stdout.write(json.dumps({"pairs": len(pairs), "patches": len(patches), "unmapped": unmapped[:5],
                  "max_error": max(errors) if errors else None,
                  "changed": sum(not torch.equal(after[k], before[k]) for k in before)}) + "\n")
