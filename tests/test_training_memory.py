"""Training-memory estimates (modules/training/memory.py): the formula's parts, the activation constant re-measured
on the tiny model, the refusal before training with its override, Adafactor, and the shipped Dreamix preset."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import sys
from pathlib import Path

import pytest
import torch
from tunevideo.modules.training import memory
from tunevideo.modules.training.tune import TuneConfig, tune
from tunevideo.nodes.tune import PRESETS

ROOT = Path(__file__).resolve().parents[1]
FAST = {"gradient_checkpointing": False, "learning_rate": 1e-3, "seed": 0}


def test_optimizer_state_formula():
    assert memory.optimizer_state_bytes([(10, 20), (5,)], "adamw") == 4 * 2 * 205
    # Adafactor: a row [10] + a column [20] for the matrix, the vector in full
    assert memory.optimizer_state_bytes([(10, 20), (5,)], "adafactor") == 4 * (10 + 20 + 5)
    with pytest.raises(ValueError, match="optimizer='sgd'"):
        memory.optimizer_state_bytes([(1,)], "sgd")


def _saved_elements(network, shape, checkpointing):
    """Elements of the tensors autograd saves in one forward pass (parameters excluded)."""
    net = network.clone()
    for p in net.parameters():
        p.requires_grad_(True)
    if checkpointing:
        net.enable_gradient_checkpointing()
    net.train()
    seen, total = set(), [0]

    def pack(t):
        if not isinstance(t, torch.nn.Parameter) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total[0] += t.numel()
        return t

    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    c = torch.randn(shape[0], 8, net.config["cross_attention_dim"], generator=g)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x, torch.tensor([500]), c)
    return total[0]


@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_constant_matches_the_tiny_model(tiny_video_model, checkpointing):
    shape = (1, 4, 4, 16, 16)
    measured = _saved_elements(tiny_video_model.network, shape, checkpointing) * 4
    est = memory.activation_bytes(tiny_video_model.network.config, 4 * 16 * 16, checkpointing, 4)
    assert 0.7 * measured <= est <= 1.5 * measured, (est, measured)


def test_estimate_parts_follow_the_trained_set(tiny_video_model):
    net = tiny_video_model.network
    shape = (1, 4, 4, 16, 16)
    full = memory.tune_estimate(net, shape, TuneConfig(trainable=("*",)), "cpu")
    lean = memory.tune_estimate(net, shape, TuneConfig(trainable=("*",), optimizer="adafactor"), "cpu")
    attn = memory.tune_estimate(net, shape, TuneConfig(trainable=PRESETS["dreamix-attention"]), "cpu")
    n = sum(p.numel() for p in net.parameters())
    assert full.trained_values == n and full.gradients == 4 * n and full.optimizer_state == 8 * n
    assert lean.optimizer_state < full.optimizer_state and lean.total < full.total
    assert attn.total < full.total
    assert "GiB" in full.describe() and "adamw" in full.describe()


def test_refuses_before_training_and_force_overrides(tiny_unet2d, tiny_unet_config, monkeypatch):
    from test_nodes import N, cond, fake_model

    latent = {"samples": torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))}
    calls = []
    monkeypatch.setattr(memory, "free_memory", lambda device: 1024)
    import tunevideo.nodes.tune as node_tune
    def training(*a, **k):
        calls.append(1)
        raise KeyError("x")

    monkeypatch.setattr(node_tune, "tune_a_video", training)
    with torch.inference_mode():
        (video,) = N["InflateUNetTemporal"]().inflate(fake_model(tiny_unet2d, tiny_unet_config))
        with pytest.raises(MemoryError, match="does not fit.*force_memory"):
            N["OneShotTune"]().run(video, latent, cond(0), 1, 1e-3, 0, "tune-a-video", "", 1, False, "fp32")
        with pytest.raises(MemoryError, match="does not fit"):
            N["DreamixFinetune"]().run(video, latent, cond(0), 1, 1e-3, 0, 0.5, "dreamix-full", "", 2, False, "fp32")
        with pytest.raises(MemoryError, match="SpatialTemporalLoRATrain"):
            N["SpatialTemporalLoRATrain"]().run(video, latent, cond(0), 0, 1, 2, 1e-3, 1e-3, 0, "spatial+temporal",
                                                False, "fp32")
        assert not calls  # refused before training started
        with pytest.raises(KeyError):  # forced: training starts (stubbed here)
            N["OneShotTune"]().run(video, latent, cond(0), 1, 1e-3, 0, "tune-a-video", "", 1, False, "fp32",
                                   force_memory=True)
    assert calls == [1]


def test_adafactor_trains(tiny_video_model):
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(1, 4, 2, 8, 8, generator=g), torch.randn(1, 8, tiny_video_model.network.config[
        "cross_attention_dim"], generator=g)
    tuned, curve = tune(tiny_video_model, x, c, TuneConfig(steps=2, trainable=("attn_temp",), optimizer="adafactor",
                                                           **FAST))
    assert len(curve) == 2 and tuned.tuned_names


def test_shipped_dreamix_workflows_fit_12_gb():
    sys.path.insert(0, str(ROOT / "tools"))
    import memory_table

    inflated, _ = memory_table.sd15_networks()
    for name in ("dreamix", "dreamix_image_to_video"):
        graph = json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())
        tune_node = next(n for n in graph.values() if n["class_type"] == "DreamixFinetune")["inputs"]
        frames = next(n["inputs"] for n in graph.values() if n["class_type"] in ("LoadVideoClip",
                                                                                  "ImageToCoarseVideo"))
        n_frames = frames.get("frame_count", frames.get("frames"))
        config = TuneConfig(trainable=PRESETS[tune_node["trainable"]], optimizer=tune_node["optimizer"],
                            gradient_checkpointing=tune_node["gradient_checkpointing"])
        est = memory.tune_estimate(inflated, (1, 4, n_frames, 64, 64), config, torch.device("cuda"))
        assert est.total < memory.MARGIN * 12e9, (name, est.describe())
    full = memory.tune_estimate(inflated, (1, 4, 8, 64, 64), TuneConfig(trainable=("*",)), torch.device("cuda"))
    assert full.total > 12e9  # why the whole-model preset is not shipped


def test_the_estimate_is_printed_before_training_starts(tiny_unet2d, tiny_unet_config, monkeypatch, caplog):
    import tunevideo.nodes.tune as node_tune
    from test_nodes import N, cond, fake_model

    monkeypatch.setattr(memory, "free_memory", lambda device: 2**40)  # fits: no refusal
    seen = []

    def training(*a, **k):  # what was logged by the time training would start
        seen.append(caplog.text)
        raise KeyError("stop")

    monkeypatch.setattr(node_tune, "tune_a_video", training)
    latent = {"samples": torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))}
    with caplog.at_level(logging.INFO), torch.inference_mode():
        (video,) = N["InflateUNetTemporal"]().inflate(fake_model(tiny_unet2d, tiny_unet_config))
        with pytest.raises(KeyError):
            N["OneShotTune"]().run(video, latent, cond(0), 1, 1e-3, 0, "tune-a-video", "", 1, False, "fp32")
    assert seen and re.search(r"OneShotTune: .*GiB.*adamw", seen[0]), seen


def test_readme_lists_the_memory_table_the_formula_gives():
    sys.path.insert(0, str(ROOT / "tools"))
    import memory_table

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        memory_table.main()
    readme = (ROOT / "README.md").read_text()
    rows = [line for line in out.getvalue().splitlines() if line.startswith("| ")]
    assert len(rows) >= 3 + 2  # header, rule, one row per preset
    missing = [line for line in rows if line not in readme]
    assert not missing, f"README's training-memory table is stale (python tools/memory_table.py): {missing}"
