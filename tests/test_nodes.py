"""Node faces without a ComfyUI host: a fake MODEL, the full Tune-A-Video chain under inference mode."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import CTX_DIM, make_unet2d
from tunevideo import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from tunevideo.modules.convert.unet import UnsupportedModelError, unet_to_ldm
from tunevideo.modules.networks.inflate import TEMPORAL_MARKER
from tunevideo.modules.sampling.schedule import NoiseSchedule
from tunevideo.nodes.boundary import INVERTED_KEY

N = NODE_CLASS_MAPPINGS


def fake_model(unet2d, unet_config, prediction="EPS", family="SD15", inference_weights=False):
    """What the nodes read off a ComfyUI ModelPatcher for SD1.x: weights, unet_config, sigmas, latent format.

    ``inference_weights``: weights made under ``torch.inference_mode`` as ComfyUI's executor loads them.
    """
    s = NoiseSchedule.scaled_linear()
    sigmas = ((1 - s.alphas_cumprod) / s.alphas_cumprod).sqrt().float()
    ldm = unet_to_ldm(unet2d)
    if inference_weights:
        with torch.inference_mode():
            ldm = {k: v.clone() for k, v in ldm.items()}
    inner = SimpleNamespace(
        diffusion_model=SimpleNamespace(state_dict=lambda: dict(ldm)),
        model_config=type(family, (), {"unet_config": unet_config})(),
        model_type=SimpleNamespace(name=prediction),
        model_sampling=SimpleNamespace(sigmas=sigmas),
        latent_format=SimpleNamespace(scale_factor=0.18215),
    )
    return SimpleNamespace(model=inner)


def cond(seed, dim=CTX_DIM):
    return [[torch.randn(1, 7, dim, generator=torch.Generator().manual_seed(seed)), {"pooled_output": None}]]


def test_mission_node_ids_are_registered_with_display_names():
    for node_id in ("InflateUNetTemporal", "OneShotTune", "DDIMInvertVideo", "SampleVideo"):
        assert node_id in N and node_id in NODE_DISPLAY_NAME_MAPPINGS


@pytest.mark.parametrize("node_id", sorted(N))
def test_every_input_has_a_tooltip_and_node_is_well_formed(node_id):
    cls = N[node_id]
    spec = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            assert len(entry) == 2 and entry[1].get("tooltip"), f"{node_id}.{name} lacks a tooltip"
    assert hasattr(cls, cls.FUNCTION) and cls.CATEGORY.startswith("TuneVideo/")
    assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)


def test_full_chain_under_inference_mode(tiny_unet2d, tiny_unet_config, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEVIDEO_HOME", str(tmp_path))
    model = fake_model(tiny_unet2d, tiny_unet_config)
    latent = {"samples": torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))}
    latent_before = latent["samples"].clone()
    src, empty, edit = cond(1), cond(2), cond(3)
    with torch.inference_mode():
        (video,) = N["InflateUNetTemporal"]().inflate(model)
        base_state = {k: v.clone() for k, v in video.network.state_dict().items()}
        tuned, curve = N["OneShotTune"]().run(video, latent, src, steps=3, learning_rate=1e-3, seed=0,
                                              trainable="tune-a-video", custom_patterns="", batch_size=1,
                                              gradient_checkpointing=True, mixed_precision="auto",
                                              prompt_note="a man skiing")
        (noise,) = N["DDIMInvertVideo"]().run(tuned, latent, empty, steps=4)
        (out,) = N["SampleVideo"]().run(tuned, edit, empty, noise, steps=4, cfg=7.5, eta=0.0, seed=1)
        saved = N["SaveTunedVideoUNet"]().save(tuned, "tests/run")
        (rel,) = saved
        (loaded,) = N["LoadTunedVideoUNet"]().load(video, rel, check_base=True)
    assert curve.shape == (1, 256, 512, 3) and 0 <= curve.min() and curve.max() <= 1
    assert noise["samples"].shape == (3, 4, 16, 16) and noise[INVERTED_KEY]["frames"] == 3
    assert out["samples"].shape == (3, 4, 16, 16) and torch.isfinite(out["samples"]).all()
    assert rel == "tests/run_00001.safetensors" and (tmp_path / "models" / "tunevideo" / rel).is_file()
    a, b = tuned.network.state_dict(), loaded.network.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Nothing the graph fed in was changed.
    assert torch.equal(latent["samples"], latent_before)
    after = video.network.state_dict()
    assert all(torch.equal(base_state[k], after[k]) for k in base_state)
    # A second save never overwrites the first.
    with torch.inference_mode():
        assert N["SaveTunedVideoUNet"]().save(tuned, "tests/run")[0] == "tests/run_00002.safetensors"


def test_same_graph_and_seed_give_a_bit_identical_delta(tiny_unet2d, tiny_unet_config, tmp_path, monkeypatch):
    """Whatever ran before (other nodes drawing from the global RNG), one graph + seed -> one tuned delta."""
    from safetensors import safe_open

    monkeypatch.setenv("TUNEVIDEO_HOME", str(tmp_path))
    latent = {"samples": torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))}
    files = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        with torch.inference_mode():
            (video,) = N["InflateUNetTemporal"]().inflate(fake_model(tiny_unet2d, tiny_unet_config))
            tuned, _ = N["OneShotTune"]().run(video, latent, cond(1), steps=2, learning_rate=1e-3, seed=7,
                                              trainable="tune-a-video", custom_patterns="", batch_size=1,
                                              gradient_checkpointing=False, mixed_precision="auto")
            files.append(N["SaveTunedVideoUNet"]().save(tuned, "seeded/run")[0])
    root = tmp_path / "models" / "tunevideo"
    with safe_open(root / files[0], "pt") as a, safe_open(root / files[1], "pt") as b:
        assert a.metadata() == b.metadata() and sorted(a.keys()) == sorted(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())


def test_frozen_weights_stay_shared_under_inference_mode(tiny_unet2d, tiny_unet_config, tmp_path, monkeypatch):
    """ComfyUI loads weights as inference tensors: tuned, loaded and parked models must not copy the frozen ones."""
    monkeypatch.setenv("TUNEVIDEO_HOME", str(tmp_path))
    latent = {"samples": torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))}
    with torch.inference_mode():
        model = fake_model(tiny_unet2d, tiny_unet_config, inference_weights=True)
        (video,) = N["InflateUNetTemporal"]().inflate(model)
        tuned, _ = N["OneShotTune"]().run(video, latent, cond(1), steps=1, learning_rate=1e-3, seed=0,
                                          trainable="tune-a-video", custom_patterns="", batch_size=1,
                                          gradient_checkpointing=True, mixed_precision="auto")
        rel = N["SaveTunedVideoUNet"]().save(tuned, "shared/run")[0]
        (loaded,) = N["LoadTunedVideoUNet"]().load(video, rel, check_base=True)
    base = {k: v.untyped_storage().data_ptr() for k, v in model.model.diffusion_model.state_dict().items()}
    assert set(base) >= {"input_blocks.1.1.proj_in.weight", "out.2.weight"}
    for result in (video, tuned, loaded):
        frozen = [p for n, p in result.network.named_parameters()
                  if n not in result.tuned_names and TEMPORAL_MARKER not in n]
        tuned_2d = [n for n in result.tuned_names if TEMPORAL_MARKER not in n]
        assert len(frozen) == len(base) - len(tuned_2d)
        # every frozen 2D tensor is one of the base's own storages: nothing was copied
        assert {p.untyped_storage().data_ptr() for p in frozen} <= set(base.values())
        assert len({p.untyped_storage().data_ptr() for p in frozen}) == len(frozen)


def test_inverted_latent_is_unscaled_comfy_convention(tiny_unet2d, tiny_unet_config):
    from tunevideo.modules.sampling.ddim import ddim_invert

    with torch.inference_mode():
        (video,) = N["InflateUNetTemporal"]().inflate(fake_model(tiny_unet2d, tiny_unet_config))
        latent = {"samples": torch.randn(2, 4, 16, 16)}
        (noise,) = N["DDIMInvertVideo"]().run(video, latent, cond(0), steps=3)
        ref = ddim_invert(video.model_fn(), video.schedule, latent["samples"].permute(1, 0, 2, 3)[None] * 0.18215,
                          cond(0)[0][0], 3)
    assert torch.allclose(noise["samples"] * 0.18215, ref[0].permute(1, 0, 2, 3), atol=1e-6)


def test_sample_from_empty_latent_uses_seeded_noise(tiny_unet2d, tiny_unet_config):
    with torch.inference_mode():
        (video,) = N["InflateUNetTemporal"]().inflate(fake_model(tiny_unet2d, tiny_unet_config))
        empty = {"samples": torch.zeros(2, 4, 16, 16)}
        runs = [N["SampleVideo"]().run(video, cond(1), cond(2), empty, 2, 5.0, 0.0, seed)[0]["samples"]
                for seed in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_bad_inputs_give_clear_errors(tiny_unet2d, tiny_unet_config, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEVIDEO_HOME", str(tmp_path))
    sdxl = dict(tiny_unet_config, adm_in_channels=2816, context_dim=2048)
    with pytest.raises(UnsupportedModelError, match="MODEL is SDXL.*SDXL"):
        N["InflateUNetTemporal"]().inflate(fake_model(tiny_unet2d, sdxl, family="SDXL"))
    with pytest.raises(UnsupportedModelError, match="FLOW"):
        N["InflateUNetTemporal"]().inflate(fake_model(tiny_unet2d, tiny_unet_config, prediction="FLOW"))
    with torch.inference_mode():
        (video,) = N["InflateUNetTemporal"]().inflate(fake_model(tiny_unet2d, tiny_unet_config))
        tune = N["OneShotTune"]()
        args = dict(steps=1, learning_rate=1e-3, seed=0, trainable="tune-a-video", custom_patterns="",
                    batch_size=1, gradient_checkpointing=False, mixed_precision="auto")
        with pytest.raises(ValueError, match="latent has 8 latent channels"):
            tune.run(video, {"samples": torch.zeros(2, 8, 16, 16)}, cond(0), **args)
        with pytest.raises(ValueError, match="positive has 80-dim embeddings but the model expects 64"):
            tune.run(video, {"samples": torch.zeros(2, 4, 16, 16)}, cond(0, dim=80), **args)
        with pytest.raises(ValueError, match="'nope' matches no module"):
            tune.run(video, {"samples": torch.zeros(2, 4, 16, 16)}, cond(0), **{**args, "trainable": "custom",
                                                                               "custom_patterns": "nope"})
        with pytest.raises(ValueError, match="positive must be a CONDITIONING"):
            tune.run(video, {"samples": torch.zeros(2, 4, 16, 16)}, [], **args)
        tuned, _ = tune.run(video, {"samples": torch.zeros(3, 4, 16, 16)}, cond(0), **args)
        (noise,) = N["DDIMInvertVideo"]().run(tuned, {"samples": torch.zeros(5, 4, 16, 16)}, cond(0), steps=2)
        with pytest.raises(ValueError, match="inverted noise has 5 frames but the VIDEO_UNET was tuned on 3"):
            N["SampleVideo"]().run(tuned, cond(1), cond(2), noise, 2, 5.0, 0.0, 0)
        rel = N["SaveTunedVideoUNet"]().save(tuned, "tests/frames")[0]
        (loaded,) = N["LoadTunedVideoUNet"]().load(video, rel, check_base=True)
        with pytest.raises(ValueError, match="inverted noise has 5 frames but the VIDEO_UNET was tuned on 3"):
            N["SampleVideo"]().run(loaded, cond(1), cond(2), noise, 2, 5.0, 0.0, 0)
    with pytest.raises(ValueError, match="filename_prefix"):
        N["SaveTunedVideoUNet"]().save(video, "../escape")


def test_inflate_node_offers_the_video_p2p_attention(tiny_unet2d, tiny_unet_config):
    spec = N["InflateUNetTemporal"].INPUT_TYPES()["optional"]["attention"]
    assert spec[0][:2] == ["tune-a-video", "video-p2p"] and spec[1]["default"] == "tune-a-video"
    with torch.inference_mode():
        (plain,) = N["InflateUNetTemporal"]().inflate(fake_model(tiny_unet2d, tiny_unet_config))
        (p2p,) = N["InflateUNetTemporal"]().inflate(fake_model(tiny_unet2d, tiny_unet_config), attention="video-p2p")
    assert (plain.network.attention, p2p.network.attention) == ("tune-a-video", "video-p2p")


def test_v_prediction_model_gives_v_schedule(tiny_unet2d, tiny_unet_config):
    sd2 = dict(tiny_unet_config, num_heads=-1, num_head_channels=16)
    with torch.inference_mode():
        (video,) = N["InflateUNetTemporal"]().inflate(fake_model(make_unet2d(sd2), sd2, prediction="V_PREDICTION",
                                                                 family="SD21"))
    assert video.schedule.prediction_type == "v_prediction"
    assert torch.allclose(video.schedule.alphas_cumprod, NoiseSchedule.scaled_linear().alphas_cumprod, rtol=1e-5)
    assert video.network.config.attention_head_dim == [2, 4, 4, 4]  # 16-channel heads over 32, 64, 64, 64 channels


def test_interrupt_from_host_stops_tuning_and_leaves_inputs_intact(tiny_unet2d, tiny_unet_config, monkeypatch):
    from tunevideo.nodes import host

    class Interrupted(Exception):
        pass

    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) == 2:
            raise Interrupted

    with torch.inference_mode():
        (video,) = N["InflateUNetTemporal"]().inflate(fake_model(tiny_unet2d, tiny_unet_config))
        before = {k: v.clone() for k, v in video.network.state_dict().items()}
        latent = {"samples": torch.randn(2, 4, 16, 16)}
        monkeypatch.setattr(host, "check_interrupt", interrupt)
        with pytest.raises(Interrupted):
            N["OneShotTune"]().run(video, latent, cond(0), steps=10, learning_rate=1e-3, seed=0,
                                   trainable="tune-a-video", custom_patterns="", batch_size=1,
                                   gradient_checkpointing=False, mixed_precision="auto")
    assert len(calls) == 2
    after = video.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_patched_sampling_and_fp8_weights(tiny_unet2d, tiny_unet_config):
    from tunevideo.nodes.boundary import compute_dtype

    class V_PREDICTION:  # noqa: N801 - ComfyUI's class name
        pass

    class ModelSamplingDiscreteDistilled(V_PREDICTION):
        sigmas = fake_model(tiny_unet2d, tiny_unet_config).model.model_sampling.sigmas

    model = fake_model(tiny_unet2d, tiny_unet_config, prediction="EPS")
    patched = ModelSamplingDiscreteDistilled()  # a ModelSamplingDiscrete object patch

    def get_model_object(name):  # ComfyUI's: the object patch where there is one, else the attribute
        return patched if name == "model_sampling" else getattr(model.model, name)

    model.get_model_object = get_model_object
    with torch.inference_mode():
        (video,) = N["InflateUNetTemporal"]().inflate(model)
    assert video.schedule.prediction_type == "v_prediction"
    fp8 = {"a": torch.zeros(2, dtype=torch.float8_e4m3fn), "b": torch.zeros(2, dtype=torch.float16)}
    assert compute_dtype(fp8, SimpleNamespace(manual_cast_dtype=torch.bfloat16)) == torch.bfloat16
    assert compute_dtype({"b": torch.zeros(2, dtype=torch.float16)}, SimpleNamespace()) is None


def test_lora_patches_are_baked_in_completely(monkeypatch):
    """ComfyUI applies the patches of modules that did not fit the GPU only in its own forward; inflation reads the
    weights directly, so it must force every patch in (as ComfyUI's checkpoint save does)."""
    from tunevideo.nodes import host

    calls = []
    fake_mm = SimpleNamespace(load_models_gpu=lambda models, **kw: calls.append(kw))
    monkeypatch.setattr(host, "_mm", fake_mm)
    host.apply_patches(SimpleNamespace(patches={}))
    assert calls == []  # nothing to bake in
    host.apply_patches(SimpleNamespace(patches={"input_blocks.1.1.proj_in.weight": ["lora"]}))
    assert calls == [{"force_patch_weights": True}]


def test_tuning_seed_widgets_default_to_fixed():
    """A freshly added tuning node must not re-tune on every Queue: its seed control starts at 'fixed'.

    The frontend (1.27) always starts a seed control at 'randomize' (a string control_after_generate names the
    widget there, it sets no default), so the pack's web extension sets it on node creation; checked in a real
    browser by hand (README), here for its wiring."""
    import tunevideo

    seed = N["OneShotTune"].INPUT_TYPES()["required"]["seed"][1]
    assert seed["control_after_generate"] is True  # the control widget keeps its standard name
    script = (Path(tunevideo.__file__).parent / tunevideo.WEB_DIRECTORY / "tunevideo.js").read_text()
    tuning_nodes = [k for k, cls in N.items() if cls.CATEGORY == "TuneVideo/train"]
    assert tuning_nodes and all(f'"{k}"' in script for k in tuning_nodes)
    assert 'control.value = "fixed"' in script


# ------------------------------------------------------------------------------------------- issue 19: bad inputs
def test_validate_inputs_never_switches_off_comfyui_checks():
    """ComfyUI skips its own min/max/list checks of every input a VALIDATE_INPUTS takes (all with **kwargs)."""
    import inspect

    for node_id, cls in N.items():
        if hasattr(cls, "VALIDATE_INPUTS"):
            params = inspect.signature(cls.VALIDATE_INPUTS).parameters.values()
            assert not any(p.kind is p.VAR_KEYWORD for p in params), f"{node_id}.VALIDATE_INPUTS takes **kwargs"


def test_load_video_clip_reads_only_inside_input(tmp_path, monkeypatch):
    from tunevideo.modules.files.video_io import write_video

    monkeypatch.setenv("TUNEVIDEO_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "input").mkdir(parents=True)
    write_video(torch.rand(4, 16, 16, 3), tmp_path / "home" / "input" / "clip.mp4", fps=8)
    write_video(torch.rand(4, 16, 16, 3), tmp_path / "outside.mp4", fps=8)
    node = N["LoadVideoClip"]
    assert node.VALIDATE_INPUTS("clip.mp4") is True
    refused = [node.VALIDATE_INPUTS(v) for v in (str(tmp_path / "outside.mp4"), str(tmp_path / "missing.mp4"),
                                                  "../outside.mp4", "../../missing.mp4")]
    assert all(isinstance(r, str) and "video" in r and "inside ComfyUI's input folder" in r for r in refused)
    assert {r.replace("missing", "outside").replace("../../", "../") for r in refused} == {
        refused[0], refused[2]}  # the same words whether or not the file exists there
    assert "got int 12345" in node.VALIDATE_INPUTS(12345)
    with pytest.raises(ValueError, match="inside ComfyUI's input folder"):
        node().load(str(tmp_path / "outside.mp4"), 0, 2, 1, 16, 16)
    for change, message in (({"frame_count": 0}, "frame_count=0"), ({"frame_count": -3}, "frame_count=-3"),
                            ({"width": 8192}, "width=8192"), ({"height": 8192}, "height=8192")):
        args = {"start_frame": 0, "frame_count": 2, "stride": 1, "width": 16, "height": 16, **change}
        with pytest.raises(ValueError, match=f"{message} is outside its allowed range"):
            node().load("clip.mp4", **args)
    frames, _ = node().load("clip.mp4", 0, 2, 1, 16, 16)
    assert frames.shape == (2, 16, 16, 3)


FLOAT_NODES = sorted(k for k, c in N.items() if any(e[0] == "FLOAT" for s in c.INPUT_TYPES().values()
                                                    for e in s.values()))


@pytest.mark.parametrize("node_id", FLOAT_NODES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_every_float_input_refuses_non_finite_values(node_id, bad):
    cls = N[node_id]
    spec = cls.INPUT_TYPES()
    names = [(n, e) for s in spec.values() for n, e in s.items()]
    for name, entry in names:
        if entry[0] != "FLOAT":
            continue
        args = {n: (bad if n == name else e[1].get("default")) for n, e in names}
        with pytest.raises(ValueError, match=f"{name}=.* must be a finite number"):
            getattr(cls(), cls.FUNCTION)(**args)


def test_sample_video_warns_when_noise_was_inverted_with_another_base(tiny_unet2d, tiny_unet_config, caplog):
    model = fake_model(tiny_unet2d, tiny_unet_config)
    latent = {"samples": torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    with torch.inference_mode():
        (video,) = N["InflateUNetTemporal"]().inflate(model)
        (noise,) = N["DDIMInvertVideo"]().run(video, latent, cond(1), steps=2)
        assert noise[INVERTED_KEY]["base_hash"] == video.base_hash
        (same,) = N["SampleVideo"]().run(video, cond(2), cond(1), noise, steps=2, cfg=5.0, eta=0.0, seed=0)
        other = video.replace(base_hash="0" * 16)
        out = N["SampleVideo"]().run(other, cond(2), cond(1), noise, steps=2, cfg=5.0, eta=0.0, seed=0)
    assert isinstance(out, dict) and "another base model" in out["ui"]["text"][0]
    assert "0" * 16 in out["ui"]["text"][0] and video.base_hash in out["ui"]["text"][0]
    assert "another base model" in caplog.text
    assert same["samples"].shape == out["result"][0]["samples"].shape


def test_empty_filename_prefix_says_so(tiny_video_model, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEVIDEO_HOME", str(tmp_path))
    for prefix in ("", "   "):
        with pytest.raises(ValueError, match="filename_prefix must not be empty"):
            N["SaveTunedVideoUNet"]().save(tiny_video_model, prefix)


def test_tuning_stops_with_a_clear_error_when_the_loss_turns_nan(tiny_video_model, monkeypatch):
    from tunevideo.modules.training import tune as T

    real = T.denoising_loss
    monkeypatch.setattr(T, "denoising_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    latent = {"samples": torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    with torch.inference_mode(), pytest.raises(ValueError, match=r"loss became nan at step 1/3 \(precision fp16\)"
                                                                  r".*lower learning rate.*fp32 or bf16"):
        N["OneShotTune"]().run(tiny_video_model, latent, cond(1), steps=3, learning_rate=1e-3, seed=0,
                               trainable="tune-a-video", custom_patterns="", batch_size=1,
                               gradient_checkpointing=False, mixed_precision="fp16", prompt_note="")


def test_tuning_stops_when_a_parameter_turns_nan_with_a_finite_loss(tiny_video_model, monkeypatch):
    """Issue 19: the last step's loss is computed before its update, so it is finite while the update has made the
    trained weights NaN; the loop must still stop (and the NaN weights never reach a saver)."""
    from tunevideo.modules.training import tune as T

    real = T.make_optimizer

    def poisoned(*args, **kwargs):
        opt = real(*args, **kwargs)
        step = opt.step

        def nan_step(*a, **k):
            out = step(*a, **k)
            with torch.no_grad():
                for group in opt.param_groups:
                    for p in group["params"]:
                        p.fill_(float("nan"))
            return out

        opt.step = nan_step
        return opt

    monkeypatch.setattr(T, "make_optimizer", poisoned)
    latent = {"samples": torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    with torch.inference_mode(), pytest.raises(ValueError, match=r"a trained parameter became NaN/infinite by step "
                                                                  r"1/1 \(precision fp32\).*lower learning rate"):
        N["OneShotTune"]().run(tiny_video_model, latent, cond(1), steps=1, learning_rate=1e-3, seed=0,
                               trainable="tune-a-video", custom_patterns="", batch_size=1,
                               gradient_checkpointing=False, mixed_precision="fp32", prompt_note="")
