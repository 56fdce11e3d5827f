"""Run inside a ComfyUI checkout's Python: sample a VIDEO_UNET through ComfyUI's own samplers and ControlNet
(VideoUNetAsModel, InvertedNoiseSigmas) and compare with the pack's SampleVideo and with direct diffusers
computations. Prints one JSON line of measured differences; tests/test_comfyui_host.py asserts on them.

    python core_sampling_check.py COMFYUI_PATH CHECKPOINT WORKDIR
"""

import json
import math
import os
import sys
import tempfile
from pathlib import Path

comfy_path, ckpt, workdir = sys.argv[1:4]
sys.path.insert(0, comfy_path)
import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True
import comfy.controlnet  # noqa: E402
import comfy.model_management as mm  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.sd  # noqa: E402
import torch  # noqa: E402
from comfy_extras.nodes_custom_sampler import SamplerCustom  # noqa: E402

import nodes  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
pkg = Path(tempfile.mkdtemp(dir=workdir))
os.symlink(ROOT, pkg / "tunevideo")
sys.path.insert(0, str(pkg))
import tunevideo  # noqa: E402
from tunevideo.modules.convert.unet import ldm_key_for, unet_from_ldm  # noqa: E402
from tunevideo.modules.networks.base import ControlResiduals  # noqa: E402
from tunevideo.modules.sampling.sigmas import from_sigma_space  # noqa: E402

N = tunevideo.NODE_CLASS_MAPPINGS
torch.manual_seed(0)
report = {}


def _emit():
    sys.stdout.write(json.dumps(report) + "\n")


import atexit  # noqa: E402

atexit.register(_emit)  # the figures measured so far are printed even when a later section fails


def result(out):
    return out["result"] if isinstance(out, dict) else out


def maxdiff(a, b):
    return float((a.float() - b.float()).abs().max())


def core(m, cfg, pos, neg, sampler, sigmas, latent):
    return SamplerCustom().sample(m, False, 0, cfg, pos, neg, comfy.samplers.sampler_object(sampler), sigmas,
                                  latent)[0]["samples"]


model, clip, vae = comfy.sd.load_checkpoint_guess_config(ckpt, output_vae=True, output_clip=True)[:3]
scale = model.model.latent_format.scale_factor
(video_unet,) = N["InflateUNetTemporal"]().inflate(model)
with torch.no_grad():  # make frames interact (fresh inflation zeroes the temporal output projections)
    for name, p in video_unet.network.named_parameters():
        if "attn_temp.to_out" in name:
            p.copy_(torch.randn(p.shape) * 0.2)
pos = nodes.CLIPTextEncode().encode(clip, "a red fox trotting through fresh snow at dawn, cinematic")[0]
neg = nodes.CLIPTextEncode().encode(clip, "")[0]
frames, steps, cfg = 3, 4, 7.5
source = {"samples": torch.randn(frames, 4, 8, 8)}
(noise,) = N["DDIMInvertVideo"]().run(video_unet, source, neg, steps)
(want,) = result(N["SampleVideo"]().run(video_unet, pos, neg, noise, steps, cfg, 0.0, 0))
want = want["samples"]
(m,) = N["VideoUNetAsModel"]().run(model, video_unet, 0)
sigmas, start = N["InvertedNoiseSigmas"]().run(m, noise, "ddim", "alpha_0", 0)
for name in ("ddim", "euler"):
    out = core(m, cfg, pos, neg, name, sigmas, start)
    # in the space the UNet works in (LATENT x the latent scale)
    report[f"sample_video_vs_{name}"] = maxdiff(from_sigma_space(out, float(sigmas[-1])) * scale, want * scale)
    report[f"sample_video_vs_{name}_unscaled_alpha0"] = maxdiff(out * scale, want * scale)  # without the a_0 map
report["want_scale"] = float(want.abs().max() * scale)
out = nodes.KSamplerAdvanced().sample(m, "disable", 0, steps, cfg, "ddim", "ddim_uniform", pos, neg, start, 0, 10000,
                                      "disable")[0]["samples"]
report["ddim_uniform_vs_sample_video"] = maxdiff(out * scale, want * scale)
report["ddim_uniform_vs_sample_video_rel"] = maxdiff(out, want) / float(want.abs().max())
sig_k, start_k = N["InvertedNoiseSigmas"]().run(m, noise, "karras", "zero", 10)
for name in ("dpmpp_2m", "euler_ancestral"):
    out = core(m, cfg, pos, neg, name, sig_k, start_k)
    report[f"{name}_karras_finite"] = bool(torch.isfinite(out).all())
    report[f"{name}_karras_vs_sample_video_rel"] = maxdiff(out, want) / float(want.abs().max())

# batch separation: two videos in one latent (frames_per_video) == each video sampled alone
source2 = {"samples": torch.randn(frames, 4, 8, 8)}
(noise2,) = N["DDIMInvertVideo"]().run(video_unet, source2, neg, steps)
_, start2 = N["InvertedNoiseSigmas"]().run(m, noise2, "ddim", "alpha_0", 0)
(m2,) = N["VideoUNetAsModel"]().run(model, video_unet, frames)
both = core(m2, cfg, pos, neg, "ddim", sigmas, {"samples": torch.cat([start["samples"], start2["samples"]])})
alone = torch.cat([core(m, cfg, pos, neg, "ddim", sigmas, start), core(m, cfg, pos, neg, "ddim", sigmas, start2)])
report["two_videos_vs_alone"] = maxdiff(both * scale, alone * scale)  # one batched call vs two: float rounding
(m_whole,) = N["VideoUNetAsModel"]().run(model, video_unet, 0)
whole = core(m_whole, cfg, pos, neg, "ddim", sigmas, {"samples": torch.cat([start["samples"], start2["samples"]])})
report["one_8_frame_clip_vs_alone"] = maxdiff(whole * scale, alone * scale)  # > 0: frames_per_video matters

# one frame, fresh inflation: the converted MODEL's prediction == the original MODEL's
(fresh,) = N["InflateUNetTemporal"]().inflate(model)
(m0,) = N["VideoUNetAsModel"]().run(model, fresh, 0)
x, sigma, cond = torch.randn(1, 4, 8, 8), torch.tensor([5.0]), pos[0][0]
with torch.no_grad():
    mm.load_models_gpu([m0])
    a = m0.model.apply_model(x, sigma, c_crossattn=cond)
    report["diffusion_model_while_converted"] = type(m0.model.diffusion_model).__name__
    mm.load_models_gpu([model])
    report["diffusion_model_after_original_loads"] = type(model.model.diffusion_model).__name__
    b = model.model.apply_model(x, sigma, c_crossattn=cond)
report["one_frame_vs_original_model"] = maxdiff((x - a) / sigma, (x - b) / sigma)  # the eps predictions
report["one_frame_vs_original_model_denoised"] = maxdiff(a, b)
report["model_size_converted"] = int(m0.model_size())
report["model_size_original"] = int(model.model_size())

# ControlNet through core (Apply ControlNet Advanced) == diffusers ControlNetModel residuals added directly
from diffusers import ControlNetModel  # noqa: E402

unet2d = unet_from_ldm(model.model.diffusion_model.state_dict(), model.model.model_config.unet_config)
unet2d = unet2d.float().eval()
cn = ControlNetModel.from_unet(unet2d)
with torch.no_grad():  # random where from_unet zero-initialises (the zero convs and the hint embedding's output)
    for name, p in cn.named_parameters():
        if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
            p.copy_(torch.randn(p.shape) * 0.05)
cn_path = Path(workdir) / "random-controlnet.safetensors"
from safetensors.torch import save_file  # noqa: E402


def controlnet_ldm(state_dict, config):
    """A diffusers ControlNet's tensors under ComfyUI's own ControlNet key names (the encoder as the UNet's input
    blocks, zero_convs, middle_block_out, input_hint_block), so ComfyUI detects it from its weights."""
    out = {}
    for key, value in state_dict.items():
        head, _, rest = key.partition(".")
        if head == "controlnet_down_blocks":
            i, _, tail = rest.partition(".")
            out[f"zero_convs.{i}.0.{tail}"] = value
        elif head == "controlnet_mid_block":
            out[f"middle_block_out.0.{rest}"] = value
        elif head == "controlnet_cond_embedding":
            part, _, tail = rest.partition(".")
            if part == "blocks":
                n, _, tail = tail.partition(".")
                index = 2 * (int(n) + 1)
            else:
                index = 0 if part == "conv_in" else 2 * (len(cn.controlnet_cond_embedding.blocks) + 1)
            out[f"input_hint_block.{index}.{tail}"] = value
        else:
            out[ldm_key_for(key, config)] = value
    return out


save_file({k: v.contiguous() for k, v in controlnet_ldm(cn.state_dict(), unet2d.config).items()}, str(cn_path))
control_net = comfy.controlnet.load_controlnet(str(cn_path))
hint = torch.rand(frames, 64, 64, 3)
pos_c, neg_c = nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, control_net, hint, 1.0, 0.0, 1.0)
sg = 3.0
latent = torch.randn(frames, 4, 8, 8)
sampling = m.get_model_object("model_sampling")
t = sampling.timestep(torch.tensor([sg]))
xk = latent * scale
xc = xk / math.sqrt(1 + sg * sg)
ctx = pos[0][0]
with torch.no_grad():
    down, mid = cn(xc, t.expand(frames), ctx.expand(frames, -1, -1), controlnet_cond=hint.permute(0, 3, 1, 2),
                   return_dict=False)
    clip_in = xc.permute(1, 0, 2, 3)[None]
    eps = video_unet.network(clip_in, t, ctx, residuals=ControlResiduals(tuple(down), mid))[0].permute(1, 0, 2, 3)
    plain = video_unet.network(clip_in, t, ctx)[0].permute(1, 0, 2, 3)
got = core(m, 1.0, pos_c, neg_c, "euler", torch.tensor([sg, 0.0]), {"samples": latent}) * scale
report["controlnet_clip_vs_direct"] = maxdiff(got, xk - sg * eps)
report["controlnet_effect"] = maxdiff(xk - sg * eps, xk - sg * plain)
pos_1, neg_1 = nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, control_net, hint[:1], 1.0, 0.0, 1.0)
got1 = core(m0, 1.0, pos_1, neg_1, "euler", torch.tensor([sg, 0.0]), {"samples": latent[:1]}) * scale
with torch.no_grad():
    d1, m1 = cn(xc[:1], t, ctx, controlnet_cond=hint[:1].permute(0, 3, 1, 2), return_dict=False)
    eps1 = unet2d(xc[:1], t, ctx, down_block_additional_residuals=tuple(d1), mid_block_additional_residual=m1).sample
report["controlnet_one_frame_vs_unet2d"] = maxdiff(got1, xk[:1] - sg * eps1)
report["complete"] = True
