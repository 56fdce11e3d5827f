"""Shipped workflows name only existing nodes, and every required input is linked or holds a valid value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tunevideo import NODE_CLASS_MAPPINGS

ROOT = Path(__file__).resolve().parents[1]
UI = sorted((ROOT / "workflows").glob("*.json"))
SEED_NAMES = {"seed", "noise_seed"}

# ComfyUI core nodes the workflows use (ComfyUI 0.3.64): required inputs, optional inputs, output types.
CORE = {
    "CheckpointLoaderSimple": ({"ckpt_name": ("COMBO",)}, {}, ["MODEL", "CLIP", "VAE"]),
    "CLIPTextEncode": ({"text": ("STRING",), "clip": ("CLIP",)}, {}, ["CONDITIONING"]),
    "VAEEncode": ({"pixels": ("IMAGE",), "vae": ("VAE",)}, {}, ["LATENT"]),
    "VAEDecode": ({"samples": ("LATENT",), "vae": ("VAE",)}, {}, ["IMAGE"]),
    "SaveAnimatedWEBP": ({"images": ("IMAGE",), "filename_prefix": ("STRING",),
                          "fps": ("FLOAT", {"min": 0.01, "max": 1000.0}), "lossless": ("BOOLEAN",),
                          "quality": ("INT", {"min": 0, "max": 100}),
                          "method": (["default", "fastest", "slowest"],)}, {}, []),
    "CreateVideo": ({"images": ("IMAGE",), "fps": ("FLOAT", {"min": 1.0, "max": 120.0})}, {"audio": ("AUDIO",)},
                    ["VIDEO"]),
    "SaveVideo": ({"video": ("VIDEO",), "filename_prefix": ("STRING",), "format": (["auto", "mp4"],),
                   "codec": (["auto", "h264"],)}, {}, []),
    "PreviewImage": ({"images": ("IMAGE",)}, {}, []),
    "LatentBatch": ({"samples1": ("LATENT",), "samples2": ("LATENT",)}, {}, ["LATENT"]),
    "EmptyLatentImage": ({"width": ("INT", {"min": 16, "max": 16384}), "height": ("INT", {"min": 16, "max": 16384}),
                          "batch_size": ("INT", {"min": 1, "max": 4096})}, {}, ["LATENT"]),
    "LoadImage": ({"image": ("COMBO",)}, {}, ["IMAGE", "MASK"]),
    "KSamplerSelect": ({"sampler_name": (["euler", "euler_ancestral", "ddim", "dpmpp_2m", "uni_pc"],)}, {},
                       ["SAMPLER"]),
    "SamplerCustom": ({"model": ("MODEL",), "add_noise": ("BOOLEAN",), "noise_seed": ("INT", {"min": 0}),
                       "cfg": ("FLOAT", {"min": 0.0, "max": 100.0}), "positive": ("CONDITIONING",),
                       "negative": ("CONDITIONING",), "sampler": ("SAMPLER",), "sigmas": ("SIGMAS",),
                       "latent_image": ("LATENT",)}, {}, ["LATENT", "LATENT"]),
    "ControlNetLoader": ({"control_net_name": ("COMBO",)}, {}, ["CONTROL_NET"]),
    "ControlNetApplyAdvanced": ({"positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
                                 "control_net": ("CONTROL_NET",), "image": ("IMAGE",),
                                 "strength": ("FLOAT", {"min": 0.0, "max": 10.0}),
                                 "start_percent": ("FLOAT", {"min": 0.0, "max": 1.0}),
                                 "end_percent": ("FLOAT", {"min": 0.0, "max": 1.0})}, {"vae": ("VAE",)},
                                ["CONDITIONING", "CONDITIONING"]),
    "Canny": ({"image": ("IMAGE",), "low_threshold": ("FLOAT", {"min": 0.01, "max": 0.99}),
               "high_threshold": ("FLOAT", {"min": 0.01, "max": 0.99})}, {}, ["IMAGE"]),
}
DYNAMIC_COMBOS = {("LoadVideoClip", "video"), ("LoadTunedVideoUNet", "weights"),
                  ("CheckpointLoaderSimple", "ckpt_name"), ("AnimateDiffVideoUNet", "motion_module"),
                  ("LoadVideoLoRA", "lora_name")}
DYNAMIC_COMBOS |= {("LoadCLIPScoreModel", "model")}
DYNAMIC_COMBOS |= {("LoadImage", "image"), ("ControlNetLoader", "control_net_name")}


def node_def(cls):
    if cls in NODE_CLASS_MAPPINGS:
        node = NODE_CLASS_MAPPINGS[cls]
        spec = node.INPUT_TYPES()
        return spec.get("required", {}), spec.get("optional", {}), list(node.RETURN_TYPES)
    if cls in CORE:
        return CORE[cls]
    raise AssertionError(f"workflow uses unknown node class {cls!r}")


def check_value(cls, name, spec, value):
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    where = f"{cls}.{name}={value!r}"
    if isinstance(kind, list):
        assert (cls, name) in DYNAMIC_COMBOS or value in kind, f"{where} not in {kind}"
    elif kind == "COMBO":
        assert isinstance(value, str) and value, where
    elif kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), where
        assert opts.get("min", -2**63) <= value <= opts.get("max", 2**63), where
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), where
        assert opts.get("min", -1e30) <= value <= opts.get("max", 1e30), where
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), where
    elif kind == "STRING":
        assert isinstance(value, str), where
    else:
        raise AssertionError(f"{where}: socket input {kind} must be linked")


@pytest.mark.parametrize("path", UI, ids=lambda p: p.name)
def test_api_workflow_is_valid(path):
    api = json.loads((ROOT / "workflows" / "api" / path.name).read_text())
    for nid, node in api.items():
        required, optional, _ = node_def(node["class_type"])
        inputs = node["inputs"]
        for name in inputs:
            assert name in required or name in optional, f"node {nid} {node['class_type']} has unknown input {name}"
        for name, spec in required.items():
            assert name in inputs, f"node {nid} {node['class_type']} misses required input {name}"
            value = inputs[name]
            if isinstance(value, list):
                src, slot = value
                src_types = node_def(api[src]["class_type"])[2]
                kind = spec[0]
                expected = "COMBO" if isinstance(kind, list) else kind
                assert src_types[slot] == expected, f"node {nid}.{name}: {src_types[slot]} linked to {expected}"
            else:
                check_value(node["class_type"], name, spec, value)


@pytest.mark.parametrize("path", UI, ids=lambda p: p.name)
def test_ui_workflow_matches_api_twin(path):
    ui = json.loads(path.read_text())
    api = json.loads((ROOT / "workflows" / "api" / path.name).read_text())
    nodes = {str(n["id"]): n for n in ui["nodes"] if n["type"] not in ("Note", "MarkdownNote")}
    assert set(nodes) == set(api)
    links = {lk[0]: lk for lk in ui["links"]}
    for nid, node in nodes.items():
        assert node["type"] == api[nid]["class_type"]
        required, optional, outputs = node_def(node["type"])
        inputs = api[nid]["inputs"]
        linked = {i["name"]: links[i["link"]] for i in node["inputs"] if i.get("link") is not None}
        for name, lk in linked.items():
            assert inputs[name] == [str(lk[1]), lk[2]], f"node {nid}.{name} link differs from the API twin"
        widgets = [k for k, s in {**required, **optional}.items()
                   if isinstance(s[0], list) or s[0] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")]
        values = list(node["widgets_values"])
        for name in widgets:
            value = values.pop(0)
            if name == "video" and node["type"] == "LoadVideoClip":
                assert values.pop() == "image"  # the upload button's value, serialised last by the frontend
            if name not in linked:
                assert value == inputs[name], f"node {nid}.{name}: UI {value!r} != API {inputs[name]!r}"
            if name in SEED_NAMES:
                assert values.pop(0) in ("fixed", "increment", "decrement", "randomize")
        assert [o["type"] for o in node["outputs"]] == outputs
    assert ui["last_link_id"] == max(links) and ui["last_node_id"] >= max(n["id"] for n in ui["nodes"])


def test_tune_a_video_defaults_are_the_papers():
    api = json.loads((ROOT / "workflows" / "api" / "tune_a_video.json").read_text())
    by_class = {n["class_type"]: n["inputs"] for n in api.values()}
    clip = by_class["LoadVideoClip"]
    assert (clip["frame_count"], clip["stride"], clip["width"], clip["height"]) == (24, 2, 512, 512)
    tune = by_class["OneShotTune"]
    # The reference code's effective trainable set: it made the paper's results (see README, "Which blocks learn").
    assert (tune["steps"], tune["learning_rate"], tune["trainable"]) == (500, 3e-5, "tune-a-video-reference")
    assert by_class["DDIMInvertVideo"]["steps"] == 50
    sample = by_class["SampleVideo"]
    assert (sample["steps"], sample["cfg"]) == (50, 12.5)


def test_video_p2p_defaults_are_the_reference_configs():
    """configs/rabbit-jump-tune.yaml + rabbit-jump-p2p.yaml and run_videop2p.py's constants."""
    api = json.loads((ROOT / "workflows" / "api" / "video_p2p.json").read_text())
    by_class = {n["class_type"]: n["inputs"] for n in api.values()}
    clip = by_class["LoadVideoClip"]
    assert (clip["frame_count"], clip["stride"], clip["width"], clip["height"]) == (8, 1, 512, 512)
    assert by_class["InflateUNetTemporal"]["attention"] == "video-p2p"
    assert (by_class["OneShotTune"]["steps"], by_class["OneShotTune"]["learning_rate"]) == (500, 3e-5)
    assert (by_class["NullTextInvertVideo"]["steps"], by_class["NullTextInvertVideo"]["fast"]) == (50, False)
    edit = by_class["VideoP2PEdit"]
    assert (edit["mode"], edit["blend_words"], edit["reweight"]) == ("refine", "rabbit, rabbit", "origami: 2")
    assert (edit["cross_replace_steps"], edit["self_replace_steps"], edit["cfg"]) == (0.2, 0.5, 7.5)


def test_only_workflows_at_top_level_are_templates():
    assert [p.name for p in UI] == sorted(p.name for p in (ROOT / "workflows" / "api").glob("*.json"))
