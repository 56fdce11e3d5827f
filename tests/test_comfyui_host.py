"""A real ComfyUI host: start it on CPU with the pack linked in, queue the shipped API workflow over HTTP.

Runs when COMFYUI_PATH points at a ComfyUI checkout (COMFYUI_PYTHON: the Python that runs it, with the pack's
dependencies installed; default: this interpreter). Everything is written under a temporary --base-directory,
so the user's ComfyUI folders are untouched. Skips with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
COMFY = os.environ.get("COMFYUI_PATH")
PYTHON = os.environ.get("COMFYUI_PYTHON", sys.executable)
pytestmark = [pytest.mark.comfyui,
              pytest.mark.skipif(not COMFY, reason="COMFYUI_PATH not set: real ComfyUI host tests skipped")]

# Smallest UNet ComfyUI's model detection still calls SD1.5: it matches on model_channels 320, context_dim 768,
# no linear projection and no ADM input; depth and level count are read from the weights.
HOST_UNET = {"model_channels": 320, "channel_mult": [1, 1], "num_res_blocks": [1, 1], "transformer_depth": [1, 0],
             "transformer_depth_middle": 1, "context_dim": 768, "num_heads": 8, "num_head_channels": -1,
             "use_linear_in_transformer": False, "adm_in_channels": None, "in_channels": 4, "out_channels": 4}


def write_host_checkpoint(path: Path) -> None:
    """Random SD1.5-layout checkpoint: tiny UNet, and the full-size VAE and CLIP-L ComfyUI always builds for SD1."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel
    from tunevideo.modules.convert.checkpoint import text_encoder_to_ldm, vae_to_ldm
    from tunevideo.modules.convert.unet import diffusers_config_from_unet_config, unet_to_ldm

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**diffusers_config_from_unet_config(HOST_UNET))
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        hidden_act="quick_gelu"))
    sd = unet_to_ldm(unet, prefix="model.diffusion_model.")
    sd.update(vae_to_ldm(vae))
    sd.update(text_encoder_to_ldm(text))
    save_file({k: v.detach().half().contiguous() for k, v in sd.items()}, str(path))


def write_host_motion_module(path: Path) -> None:
    """Random AnimateDiff v2 motion module in the original key layout, sized for HOST_UNET's blocks."""
    from safetensors.torch import save_file
    from tunevideo.tiny import tiny_motion_module

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tiny_motion_module("v2", seed=0, unet_config=HOST_UNET), str(path))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _post(url: str, payload: dict):
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
            return json.loads(body) if body else {}
    except urllib.error.HTTPError as e:
        raise AssertionError(f"POST {url} -> {e.code}: {e.read().decode()[:2000]}") from e


def _wait(prompt_id: str, base_url: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hist = _get(f"{base_url}/history/{prompt_id}")
        if prompt_id in hist and hist[prompt_id].get("status", {}).get("completed") is not None:
            return hist[prompt_id]
        if prompt_id in hist and hist[prompt_id].get("status", {}).get("status_str") == "error":
            return hist[prompt_id]
        time.sleep(1)
    raise AssertionError(f"prompt {prompt_id} did not finish in {timeout}s")


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    if not (Path(COMFY) / "main.py").is_file():
        pytest.skip(f"COMFYUI_PATH={COMFY} has no main.py")
    base = tmp_path_factory.mktemp("comfy_base")
    for sub in ("custom_nodes", "models/checkpoints", "input", "output", "user"):
        (base / sub).mkdir(parents=True)
    (base / "custom_nodes" / "ComfyUI-TuneVideo").symlink_to(ROOT, target_is_directory=True)
    write_host_checkpoint(base / "models" / "checkpoints" / "tiny-sd15.safetensors")
    write_host_motion_module(base / "models" / "animatediff_models" / "mm-tiny-v2.safetensors")
    shutil.copy(ROOT / "assets" / "sample" / "man-skiing-16f-128.mp4", base / "input" / "man-skiing.mp4")
    port = _free_port()
    log = open(base / "comfyui.log", "w")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                             "--base-directory", str(base), "--disable-auto-launch"],
                            cwd=COMFY, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            _get(f"{url}/object_info/InflateUNetTemporal", timeout=5)
            break
        except (urllib.error.URLError, ConnectionError, OSError) as e:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"ComfyUI did not start: {(base / 'comfyui.log').read_text()[-3000:]}") from e
            time.sleep(1)
    yield url, base
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


# CLIP Text Encode makes 154 tokens of the first (over 75 tokens) and 231 of the second (over 150): two 77-token
# windows vs three, so cond and uncond differ in length wherever they meet.
LONG_PROMPT = ("mickey mouse in a bright red jacket and yellow gloves is skiing down a steep snowy mountain slope at "
               "sunrise, powder snow spraying behind his skis, pine trees covered in fresh snow on both sides, "
               "dramatic golden light, crisp blue sky, cinematic wide shot, highly detailed, sharp focus, smooth "
               "motion, award winning photograph, vivid colours, soft shadows on the snow, a small cabin in the "
               "distance with smoke rising from the chimney")
LONG_NEGATIVE = ", ".join(["blurry, low quality, jpeg artifacts, watermark, text, deformed hands, extra limbs, "
                           "flicker, duplicated frames, overexposed, underexposed, noisy, grainy"] * 4)


def _shrunk_workflow(steps: int = 3) -> dict:
    """The shipped API workflow on the tiny checkpoint and clip, with long prompts on every side."""
    api = json.loads((ROOT / "workflows" / "api" / "tune_a_video.json").read_text())
    by_class = {n["class_type"]: n["inputs"] for n in api.values()}
    by_class["CheckpointLoaderSimple"]["ckpt_name"] = "tiny-sd15.safetensors"
    by_class["LoadVideoClip"].update(video="man-skiing.mp4", frame_count=4, stride=2, width=64, height=64)
    by_class["OneShotTune"].update(steps=steps, learning_rate=1e-3)
    by_class["DDIMInvertVideo"]["steps"] = 3
    by_class["SampleVideo"].update(steps=3, cfg=5.0)
    texts = {n.get("_meta", {}).get("title"): n["inputs"] for n in api.values() if n["class_type"] == "CLIPTextEncode"}
    texts["Edited prompt"]["text"] = LONG_PROMPT
    texts["Source prompt"]["text"] = "a man is skiing down a snowy slope, " + LONG_PROMPT
    texts["Empty prompt (inversion + negative)"]["text"] = LONG_NEGATIVE
    return api


def test_nodes_are_registered_with_the_host(host):
    url, _ = host
    info = _get(f"{url}/object_info")
    for node_id in ("InflateUNetTemporal", "OneShotTune", "DDIMInvertVideo", "SampleVideo", "LoadVideoClip",
                    "SaveTunedVideoUNet", "LoadTunedVideoUNet"):
        assert node_id in info, node_id
    assert info["OneShotTune"]["category"] == "TuneVideo/train"
    assert "man-skiing.mp4" in info["LoadVideoClip"]["input"]["required"]["video"][0]
    templates = _get(f"{url}/workflow_templates")
    assert {"tune_a_video", "video_p2p"} <= set(templates.get("ComfyUI-TuneVideo", [])), templates
    extensions = _get(f"{url}/extensions")  # the frontend loads these; ours sets tuning seeds to "fixed"
    assert "/extensions/ComfyUI-TuneVideo/tunevideo.js" in extensions, extensions


def _conditioning_tokens(text: str) -> int:
    """Tokens of CLIP Text Encode's conditioning for ``text``: ComfyUI splits the prompt's tokens into windows of
    75, each framed by start/end tokens to 77 (comfy/sd1_clip.py)."""
    from tunevideo.modules.convert.text_encoder import load_tokenizer

    n = len(load_tokenizer(Path(COMFY) / "comfy" / "sd1_tokenizer")(text)["input_ids"]) - 2
    return 77 * max(1, -(-n // 75))


def test_api_workflow_runs_and_tuned_weights_reload(host):
    url, base = host
    assert (_conditioning_tokens(LONG_PROMPT), _conditioning_tokens(LONG_NEGATIVE)) == (154, 231)
    reply = _post(f"{url}/prompt", {"prompt": _shrunk_workflow(), "client_id": "tunevideo-test"})
    assert not reply.get("node_errors"), reply
    result = _wait(reply["prompt_id"], url, timeout=900)
    assert result["status"]["status_str"] == "success", json.dumps(result["status"])[-3000:]
    outputs = result["outputs"]
    webp = outputs["12"]["images"][0]
    assert (base / "output" / webp["subfolder"] / webp["filename"]).stat().st_size > 0
    video_files = list((base / "output").rglob("*.mp4"))
    assert video_files and video_files[0].stat().st_size > 0
    delta = base / "models" / "tunevideo" / "tune_a_video" / "man-skiing_00001.safetensors"
    assert delta.is_file()

    # The delta reloads headlessly onto the same checkpoint: ComfyUI's MODEL and the single-file loader agree on
    # the base-model hash, and the weights apply.
    from tunevideo.modules.build import video_model_from_checkpoint
    from tunevideo.modules.convert.checkpoint import load_checkpoint
    from tunevideo.modules.deltas import load_delta, read_delta

    comp = load_checkpoint(base / "models" / "checkpoints" / "tiny-sd15.safetensors", dtype=torch.float32,
                           tokenizer_dir=None if os.environ.get("COMFYUI_PATH") is None else None)
    model = video_model_from_checkpoint(comp)
    tensors, meta = read_delta(delta)
    assert meta["base_model_hash"] == comp.sha256_short and meta["frames"] == "4" and meta["width"] == "64"
    loaded = load_delta(model, delta)
    state = loaded.network.state_dict()
    assert all(torch.equal(state[k].to(v.dtype), v) for k, v in tensors.items())

    # And through the host: load the delta with LoadTunedVideoUNet and save it again; contents must be identical.
    api = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15.safetensors"}},
           "2": {"class_type": "InflateUNetTemporal", "inputs": {"model": ["1", 0]}},
           "3": {"class_type": "LoadTunedVideoUNet",
                 "inputs": {"video_unet": ["2", 0], "weights": "tune_a_video/man-skiing_00001.safetensors",
                            "check_base": True}},
           "4": {"class_type": "SaveTunedVideoUNet", "inputs": {"video_unet": ["3", 0],
                                                               "filename_prefix": "reloaded/copy"}}}
    reply = _post(f"{url}/prompt", {"prompt": api, "client_id": "tunevideo-test"})
    result = _wait(reply["prompt_id"], url, timeout=300)
    assert result["status"]["status_str"] == "success", json.dumps(result["status"])[-3000:]
    again, again_meta = read_delta(base / "models" / "tunevideo" / "reloaded" / "copy_00001.safetensors")
    assert again.keys() == tensors.keys() and all(torch.equal(again[k], tensors[k]) for k in tensors)
    assert again_meta == meta  # the tuning history survives load -> save


def test_combined_conditioning_samples(host):
    """Conditioning (Combine) of a long and a short prompt, strength-set, into inversion and sampling."""
    url, base = host
    clip = {"video": "man-skiing.mp4", "start_frame": 0, "frame_count": 3, "stride": 1, "width": 64, "height": 64}
    api = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15.safetensors"}},
           "2": {"class_type": "InflateUNetTemporal", "inputs": {"model": ["1", 0]}},
           "3": {"class_type": "LoadVideoClip", "inputs": clip},
           "4": {"class_type": "VAEEncode", "inputs": {"pixels": ["3", 0], "vae": ["1", 2]}},
           "5": {"class_type": "CLIPTextEncode", "inputs": {"text": LONG_PROMPT, "clip": ["1", 1]}},
           "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
           "7": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["5", 0],
                                                                 "conditioning_2": ["6", 0]}},
           "8": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
           "9": {"class_type": "DDIMInvertVideo", "inputs": {"video_unet": ["2", 0], "latent": ["4", 0],
                                                             "conditioning": ["7", 0], "steps": 2}},
           "10": {"class_type": "SampleVideo", "inputs": {"video_unet": ["2", 0], "positive": ["7", 0],
                                                          "negative": ["8", 0], "latent": ["9", 0], "steps": 2,
                                                          "cfg": 7.5, "eta": 0.0, "seed": 1}},
           "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["1", 2]}},
           "12": {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}}}
    reply = _post(f"{url}/prompt", {"prompt": api, "client_id": "tunevideo-test"})
    result = _wait(reply["prompt_id"], url, timeout=300)
    assert result["status"]["status_str"] == "success", json.dumps(result["status"])[-3000:]
    assert len(result["outputs"]["12"]["images"]) == 3


def test_interrupt_stops_tuning_and_the_next_queue_runs(host):
    url, _ = host
    reply = _post(f"{url}/prompt", {"prompt": _shrunk_workflow(steps=100000), "client_id": "tunevideo-test"})
    deadline = time.monotonic() + 120
    while _get(f"{url}/queue")["queue_running"] == [] and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(3)  # inside OneShotTune by now (the earlier nodes are cached)
    _post(f"{url}/interrupt", {})
    result = _wait(reply["prompt_id"], url, timeout=120)
    messages = [m[0] for m in result["status"]["messages"]]
    assert "execution_interrupted" in messages, messages
    reply = _post(f"{url}/prompt", {"prompt": _shrunk_workflow(steps=2), "client_id": "tunevideo-test"})
    result = _wait(reply["prompt_id"], url, timeout=600)
    assert result["status"]["status_str"] == "success", json.dumps(result["status"])[-3000:]


def test_video_p2p_workflow_runs(host):
    """The shipped Video-P2P API workflow, shrunk: 2 frames at 64x64, 2 tuning steps, 3 DDIM steps."""
    url, base = host
    api = json.loads((ROOT / "workflows" / "api" / "video_p2p.json").read_text())
    by_class = {n["class_type"]: n["inputs"] for n in api.values()}
    by_class["CheckpointLoaderSimple"]["ckpt_name"] = "tiny-sd15.safetensors"
    by_class["LoadVideoClip"].update(video="man-skiing.mp4", frame_count=2, width=64, height=64)
    by_class["OneShotTune"].update(steps=2, learning_rate=1e-3)
    by_class["NullTextInvertVideo"]["steps"] = 3
    reply = _post(f"{url}/prompt", {"prompt": api, "client_id": "tunevideo-test"})
    assert not reply.get("node_errors"), reply
    result = _wait(reply["prompt_id"], url, timeout=900)
    assert result["status"]["status_str"] == "success", json.dumps(result["status"])[-3000:]
    outputs = result["outputs"]
    webp = outputs["10"]["images"][0]
    assert (base / "output" / webp["subfolder"] / webp["filename"]).stat().st_size > 0
    assert outputs["14"]["images"] and outputs["15"]["images"]  # source reconstruction, attention view
    from tunevideo.modules.deltas import read_delta

    _, meta = read_delta(base / "models" / "tunevideo" / "video_p2p" / "rabbit-jump_00001.safetensors")
    assert meta["attention"] == "video-p2p"


def _shrunk_motion_director(name: str) -> dict:
    api = json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())
    for node in api.values():
        cls, inputs = node["class_type"], node["inputs"]
        if cls == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = "tiny-sd15.safetensors"
        elif cls == "AnimateDiffVideoUNet":
            inputs["motion_module"] = "mm-tiny-v2.safetensors"
        elif cls == "LoadVideoClip":
            inputs.update(video="man-skiing.mp4", frame_count=3, stride=2, width=64, height=64,
                          start_frame=3 if "2" in node["_meta"]["title"] else 0)
        elif cls == "SpatialTemporalLoRATrain":
            inputs.update(steps=2, rank=4, frames_per_video=3 if inputs["frames_per_video"] else 0)
        elif cls in ("DDIMInvertVideo", "SampleVideo"):
            inputs["steps"] = 2
        elif cls == "EmptyLatentImage":
            inputs.update(width=64, height=64, batch_size=3)
        elif cls == "CLIPTextEncode" and "New prompt" in node["_meta"]["title"]:
            inputs["text"] = LONG_PROMPT
    return api


def test_motion_director_workflows_run_and_their_loras_load_in_comfyui(host):
    """Both shipped MotionDirector workflows, shrunk; the spatial LoRA goes through ComfyUI's own LoRA loader."""
    url, base = host
    for name in ("motion_director", "motion_director_multi"):
        reply = _post(f"{url}/prompt", {"prompt": _shrunk_motion_director(name), "client_id": "tunevideo-test"})
        assert not reply.get("node_errors"), reply
        result = _wait(reply["prompt_id"], url, timeout=900)
        assert result["status"]["status_str"] == "success", json.dumps(result["status"])[-3000:]
        assert any(out.get("images") for out in result["outputs"].values())
    motion = base / "models" / "animatediff_motion_lora" / "motion_director"
    loras = base / "models" / "loras" / "motion_director"
    assert (motion / "ski_temporal_00001.safetensors").is_file() and (motion / "cycling_temporal_00001.safetensors")
    assert sorted(p.name for p in loras.glob("cycling_*")) == ["cycling_spatial_v0_00001.safetensors",
                                                               "cycling_spatial_v1_00001.safetensors"]
    from safetensors import safe_open

    with safe_open(str(motion / "ski_temporal_00001.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["method"] == "motion-director" and meta["motion_module"] == "mm-tiny-v2.safetensors"
    assert json.loads(meta["prompts"]) == ["A person is skiing"]
    check = subprocess.run([PYTHON, str(ROOT / "tests" / "host" / "core_lora_check.py"), COMFY,
                            str(base / "models" / "checkpoints" / "tiny-sd15.safetensors"),
                            str(loras / "ski_spatial_00001.safetensors")],
                           capture_output=True, text=True, timeout=600, cwd=COMFY)
    assert check.returncode == 0, check.stderr[-3000:]
    report = json.loads(check.stdout.strip().splitlines()[-1])
    assert report["unmapped"] == [] and report["patches"] == report["pairs"] > 0, report
    assert report["changed"] >= report["pairs"] * 0.9 and report["max_error"] < 1e-3, report


def _write_eval_models(models: Path) -> None:
    """models/clip_vision: a tiny two-tower CLIP folder (byte tokenizer beside it) and a random CLIP vision file
    core Load CLIP Vision accepts. ComfyUI picks its config from the key layout and needs ViT-L/14's (24 layers,
    width 1024), so that one is full size (fp16, about 0.6 GB)."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    sys.path.insert(0, str(ROOT / "tests"))
    from clip_helpers import write_clip_folder

    write_clip_folder(models / "tiny-clip")
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    vision = CLIPVisionModelWithProjection(config)
    save_file({k: v.detach().half().contiguous() for k, v in vision.state_dict().items()},
              str(models / "vit-l-random.safetensors"))


def test_evaluate_workflow_scores_like_the_engine(host):
    """The shipped evaluate workflow (tiny CLIP, 4 frames), then the same graph with a core Load CLIP Vision on the
    clip_vision input: the node's numbers equal the engine's direct computation on the same frames."""
    from tunevideo.modules.evaluation.clip_files import load_clip_model
    from tunevideo.modules.evaluation.clip_score import score_video
    from tunevideo.modules.files.video_io import read_video

    url, base = host
    models = base / "models" / "clip_vision"
    models.mkdir(parents=True, exist_ok=True)
    _write_eval_models(models)
    api = json.loads((ROOT / "workflows" / "api" / "evaluate.json").read_text())
    by_title = {n.get("_meta", {}).get("title", n["class_type"]): n["inputs"] for n in api.values()}
    edited = dict(video="man-skiing.mp4", start_frame=3, frame_count=4, stride=1, width=64, height=48)
    source = dict(video="man-skiing.mp4", start_frame=0, frame_count=4, stride=2, width=64, height=64)
    by_title["Edited video (copy the saved edit into ComfyUI/input)"].update(edited)
    by_title["Source video, as it was edited (24 frames, stride 2)"].update(source)
    by_title["CLIP ViT-L/14 (models/clip_vision)"]["model"] = "tiny-clip"
    score_id = next(k for k, n in api.items() if n["class_type"] == "CLIPVideoScore")
    prompt = api[score_id]["inputs"]["prompt"]

    def run(graph):
        reply = _post(f"{url}/prompt", {"prompt": graph, "client_id": "tunevideo-test"})
        assert not reply.get("node_errors"), reply
        result = _wait(reply["prompt_id"], url, timeout=600)
        assert result["status"]["status_str"] == "success", json.dumps(result["status"])[-3000:]
        return result["outputs"][score_id]["clip_scores"][0]

    got = run(api)
    frames = read_video(base / "input" / "man-skiing.mp4", start=3, count=4, stride=1, width=64, height=48)[0]
    src = read_video(base / "input" / "man-skiing.mp4", start=0, count=4, stride=2, width=64, height=64)[0]
    want = score_video(load_clip_model(models / "tiny-clip"), frames, prompt, src)
    assert got["frame_consistency"] == pytest.approx(want.frame_consistency, abs=1e-5)
    assert got["text_alignment"] == pytest.approx(want.text_alignment, abs=1e-3)
    assert got["source_similarity"] == pytest.approx(want.source_similarity, abs=1e-5)
    assert got["text_per_frame"] == pytest.approx(want.text_per_frame, abs=1e-3)

    api["90"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "vit-l-random.safetensors"}}
    api[score_id]["inputs"]["clip_vision"] = ["90", 0]
    got = run(api)
    by_vision = score_video(load_clip_model(models / "vit-l-random.safetensors"), frames, None, src)
    # A random ViT-L/14 maps all frames close together (cosines ~0.9999), so compare the distances from 1.
    for key in ("frame_consistency", "source_similarity"):
        assert 1 - got[key] == pytest.approx(1 - getattr(by_vision, key), rel=1e-2), key
    assert [1 - c for c in got["consecutive"]] == pytest.approx([1 - c for c in by_vision.consecutive], rel=1e-2)
    assert got["text_alignment"] == pytest.approx(want.text_alignment, abs=1e-3)  # still the two-tower model's


def _shrunk_dreamix_ei2(name: str) -> dict:
    api = json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())
    for node in api.values():
        cls, inputs = node["class_type"], node["inputs"]
        if cls == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = "tiny-sd15.safetensors"
        elif cls == "LoadVideoClip":
            inputs.update(video="man-skiing.mp4", frame_count=3, stride=2, width=64, height=64)
        elif cls == "LoadImage":
            inputs["image"] = "still.png"
        elif cls == "ImageToCoarseVideo":
            inputs["frames"] = 3
        elif cls in ("DreamixFinetune", "OneShotTune"):
            inputs.update(steps=2, learning_rate=1e-3)
        elif cls in ("DreamixCorruptedSample", "DDIMInvertVideo", "SampleVideo"):
            inputs["steps"] = 2
        elif cls == "CLIPTextEncode" and inputs["text"]:
            inputs["text"] = LONG_PROMPT
    return api


def test_dreamix_and_ei2_workflows_run(host):
    """The three shipped Dreamix / EI² workflows, shrunk to 3 frames at 64x64 and 2 steps, with long prompts."""
    url, base = host
    from PIL import Image

    Image.new("RGB", (80, 64), (90, 140, 200)).save(base / "input" / "still.png")
    for name in ("dreamix", "dreamix_image_to_video", "ei2"):
        reply = _post(f"{url}/prompt", {"prompt": _shrunk_dreamix_ei2(name), "client_id": "tunevideo-test"})
        assert not reply.get("node_errors"), reply
        result = _wait(reply["prompt_id"], url, timeout=900)
        assert result["status"]["status_str"] == "success", (name, json.dumps(result["status"])[-3000:])
        assert any(out.get("images") for out in result["outputs"].values()), name
    from tunevideo.modules.deltas import read_delta

    _, meta = read_delta(base / "models" / "tunevideo" / "ei2" / "man-skiing_00001.safetensors")
    assert (meta["attention"], meta["temporal"]) == ("ei2-ffam", "ei2-stam")


def test_load_video_clip_outside_input_and_zero_frames_are_refused_at_validation(host):
    """Issue 19: VALIDATE_INPUTS(video) alone keeps ComfyUI's min/max checks; paths outside input/ are refused."""
    url, base = host
    outside = base / "outside.mp4"
    shutil.copy(ROOT / "assets" / "sample" / "man-skiing-16f-128.mp4", outside)
    for video, frame_count, expected in ((str(outside), 4, "inside ComfyUI's input folder"),
                                         ("../outside.mp4", 4, "inside ComfyUI's input folder"),
                                         ("man-skiing.mp4", 0, "frame_count")):
        api = _shrunk_workflow()
        clip_id = next(k for k, n in api.items() if n["class_type"] == "LoadVideoClip")
        api[clip_id]["inputs"].update(video=video, frame_count=frame_count)
        req = urllib.request.Request(f"{url}/prompt", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"prompt": api, "client_id": "tunevideo-test"}).encode())
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=30)
        body = refused.value.read().decode()
        assert refused.value.code == 400 and expected in body, body[:2000]


def _shrunk_core_workflow(name: str, sampler: str | None = None, spacing: str | None = None,
                          end: str | None = None, steps: int | None = None) -> dict:
    api = json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())
    by_class = {n["class_type"]: n["inputs"] for n in api.values()}
    by_class["CheckpointLoaderSimple"]["ckpt_name"] = "tiny-sd15.safetensors"
    by_class["LoadVideoClip"].update(video="man-skiing.mp4", frame_count=3, stride=2, width=64, height=64)
    by_class["OneShotTune"].update(steps=2, learning_rate=1e-3)
    by_class["DDIMInvertVideo"]["steps"] = 4
    by_class["InvertedNoiseSigmas"].update({k: v for k, v in (("spacing", spacing), ("end", end),
                                                              ("steps", steps)) if v is not None})
    if sampler:
        by_class["KSamplerSelect"]["sampler_name"] = sampler
    if "ControlNetLoader" in by_class:
        by_class["ControlNetLoader"]["control_net_name"] = "random-controlnet.safetensors"
    return api


def test_core_samplers_and_controlnet_run_the_tuned_video_unet(host):
    """VideoUNetAsModel through ComfyUI's own samplers and ControlNet, measured in-process (SampleVideo equivalence,
    ddim_uniform's last step, batch separation, one frame vs the original MODEL, ControlNet vs diffusers), then both
    shipped workflows over HTTP with three samplers and an interrupt."""
    url, base = host
    controlnets = base / "models" / "controlnet"
    controlnets.mkdir(parents=True, exist_ok=True)
    check = subprocess.run([PYTHON, str(ROOT / "tests" / "host" / "core_sampling_check.py"), COMFY,
                            str(base / "models" / "checkpoints" / "tiny-sd15.safetensors"), str(controlnets)],
                           capture_output=True, text=True, timeout=1200, cwd=COMFY)
    assert check.returncode == 0, check.stderr[-3000:]
    report = json.loads(check.stdout.strip().splitlines()[-1])
    assert report.get("complete"), report
    assert report["sample_video_vs_ddim"] <= 1e-4 and report["sample_video_vs_euler"] <= 1e-4, report
    assert report["one_frame_vs_original_model"] <= 1e-5, report
    assert report["two_videos_vs_alone"] <= 1e-4 < report["one_8_frame_clip_vs_alone"], report
    assert report["controlnet_clip_vs_direct"] <= 1e-4 < report["controlnet_effect"], report
    assert report["controlnet_one_frame_vs_unet2d"] <= 1e-4, report
    assert report["diffusion_model_while_converted"] == "VideoDiffusionModel", report
    assert report["diffusion_model_after_original_loads"] == "UNetModel", report
    assert report["dpmpp_2m_karras_finite"] and report["euler_ancestral_karras_finite"], report
    assert report["ddim_uniform_vs_sample_video_rel"] < 0.05, report  # only the last target differs

    runs = [("tune_a_video_ksampler", {"sampler": "dpmpp_2m"}),
            ("tune_a_video_ksampler", {"sampler": "euler_ancestral", "steps": 3}),
            ("tune_a_video_controlnet", {"sampler": "ddim"})]
    for name, change in runs:
        api = _shrunk_core_workflow(name, **change)
        reply = _post(f"{url}/prompt", {"prompt": api, "client_id": "tunevideo-test"})
        assert not reply.get("node_errors"), reply
        result = _wait(reply["prompt_id"], url, timeout=900)
        assert result["status"]["status_str"] == "success", json.dumps(result["status"])[-3000:]
        webp = result["outputs"]["15"]["images"][0]
        assert (base / "output" / webp["subfolder"] / webp["filename"]).stat().st_size > 0
    # an interrupt inside SamplerCustom (everything before it is cached), then the next queue runs
    api = _shrunk_core_workflow("tune_a_video_controlnet", sampler="euler", spacing="karras", end="zero", steps=400)
    reply = _post(f"{url}/prompt", {"prompt": api, "client_id": "tunevideo-test"})
    deadline = time.monotonic() + 120
    while _get(f"{url}/queue")["queue_running"] == [] and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(3)
    _post(f"{url}/interrupt", {})
    result = _wait(reply["prompt_id"], url, timeout=300)
    assert "execution_interrupted" in [m[0] for m in result["status"]["messages"]]
    reply = _post(f"{url}/prompt", {"prompt": _shrunk_core_workflow("tune_a_video_controlnet", sampler="ddim"),
                                    "client_id": "tunevideo-test"})
    assert _wait(reply["prompt_id"], url, timeout=600)["status"]["status_str"] == "success"


def _shrunk_long(frames: int = 16, window: int = 6, overlap: int = 2, sample_steps: int = 3) -> dict:
    api = json.loads((ROOT / "workflows" / "api" / "tune_a_video_long.json").read_text())
    by_class = {n["class_type"]: n["inputs"] for n in api.values()}
    by_class["CheckpointLoaderSimple"]["ckpt_name"] = "tiny-sd15.safetensors"
    by_class["LoadVideoClip"].update(video="man-skiing.mp4", frame_count=frames, stride=1, width=64, height=64)
    by_class["VideoContextWindows"].update(context_length=window, context_overlap=overlap)
    by_class["OneShotTune"].update(steps=2, learning_rate=1e-3)
    by_class["DDIMInvertVideo"]["steps"] = 3
    by_class["SampleVideo"].update(steps=sample_steps, cfg=5.0)
    return api


def test_long_clip_workflow_runs_through_windows_and_stops_between_windows(host):
    """tune_a_video_long, shrunk: 16 frames through 6-frame windows (4 windows) for tuning, inversion and sampling;
    then an interrupt while SampleVideo walks its windows, and the next queue runs."""
    url, base = host
    reply = _post(f"{url}/prompt", {"prompt": _shrunk_long(), "client_id": "tunevideo-test"})
    assert not reply.get("node_errors"), reply
    result = _wait(reply["prompt_id"], url, timeout=900)
    assert result["status"]["status_str"] == "success", json.dumps(result["status"])[-3000:]
    webp = result["outputs"]["12"]["images"]
    assert len(webp) == 1 and (base / "output" / webp[0]["subfolder"] / webp[0]["filename"]).stat().st_size > 0
    reply = _post(f"{url}/prompt", {"prompt": _shrunk_long(sample_steps=400), "client_id": "tunevideo-test"})
    deadline = time.monotonic() + 120
    while _get(f"{url}/queue")["queue_running"] == [] and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(3)  # inside SampleVideo's windows (tuning and inversion are cached)
    _post(f"{url}/interrupt", {})
    t0 = time.monotonic()
    result = _wait(reply["prompt_id"], url, timeout=300)
    assert "execution_interrupted" in [m[0] for m in result["status"]["messages"]]
    assert time.monotonic() - t0 < 60  # stopped at a window boundary, not after 400 steps
