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
    model.get_model_object = lambda name: ModelSamplingDiscreteDistilled()  # a ModelSamplingDiscrete object patch
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
