"""Delta checkpoints: exact round trips, metadata, atomic no-overwrite writes, reference layout, clear errors."""

from __future__ import annotations

import pytest
import torch
from conftest import CTX_DIM
from safetensors.torch import save_file
from tunevideo.modules.convert.identity import unet_hash
from tunevideo.modules.convert.unet import unet_to_ldm
from tunevideo.modules.deltas import BaseMismatchError, load_delta, read_delta, save_delta
from tunevideo.modules.training.tune import TuneConfig, tune


@pytest.fixture()
def tuned(tiny_video_model):
    g = torch.Generator().manual_seed(0)
    latents, ctx = torch.randn(1, 4, 3, 16, 16, generator=g), torch.randn(1, 7, CTX_DIM, generator=g)
    model, _ = tune(tiny_video_model, latents, ctx, TuneConfig(steps=2, learning_rate=1e-3, seed=0,
                                                               gradient_checkpointing=False), prompt="a man skiing")
    return model


def test_save_load_round_trip_is_exact(tuned, tiny_video_model, tmp_path):
    path = tmp_path / "delta.safetensors"
    meta = save_delta(tuned, path)
    tensors, stored = read_delta(path)
    assert set(tensors) == set(tuned.delta_names())
    assert len(tensors) < len(tuned.network.state_dict()) / 2  # a delta, not the whole UNet
    assert stored["method"] == "tune-a-video" and stored["prompt"] == "a man skiing"
    assert stored["base_model_hash"] == tiny_video_model.base_hash and stored["frames"] == "3"
    assert stored == meta
    loaded = load_delta(tiny_video_model, path)
    a, b = tuned.network.state_dict(), loaded.network.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.delta_names() == tuned.delta_names()


def test_writes_are_atomic_and_never_overwrite(tuned, tmp_path):
    path = tmp_path / "delta.safetensors"
    save_delta(tuned, path)
    first = path.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        save_delta(tuned, path)
    assert path.read_bytes() == first
    assert [p.name for p in tmp_path.iterdir()] == ["delta.safetensors"]  # no temp files left


def test_mismatched_base_is_refused(tuned, tiny_video_model, tmp_path):
    path = tmp_path / "delta.safetensors"
    save_delta(tuned, path)
    other = tiny_video_model.replace(base_hash="0123456789abcdef",
                                     base_fingerprint=tiny_video_model.base_fingerprint.replace("A", "B"))
    with pytest.raises(BaseMismatchError, match="0123456789abcdef"):
        load_delta(other, path)
    assert load_delta(other, path, check_base=False).network is not None
    with pytest.raises(BaseMismatchError):  # a model without a fingerprint is judged by its hash alone
        load_delta(other.replace(base_fingerprint=""), path)


def test_official_full_unet_layout_loads(tuned, tiny_video_model, tmp_path):
    # Tune-A-Video saves the whole UNet3DConditionModel under unet/ (keys = ours); keep only what differs.
    folder = tmp_path / "man-skiing" / "unet"
    folder.mkdir(parents=True)
    full = {k: v.contiguous() for k, v in tuned.network.state_dict().items()}
    save_file(full, str(folder / "diffusion_pytorch_model.safetensors"))
    loaded = load_delta(tiny_video_model, tmp_path / "man-skiing")
    a, b = tuned.network.state_dict(), loaded.network.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.delta_names() == tuned.delta_names()
    # A full checkpoint from another base differs in weights Tune-A-Video never tunes.
    full["conv_in.weight"] = full["conv_in.weight"] + 1
    save_file(full, str(folder / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(BaseMismatchError, match="conv_in.weight"):
        load_delta(tiny_video_model, tmp_path / "man-skiing")


def test_bad_files_give_clear_errors(tiny_video_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_delta(tiny_video_model, tmp_path / "missing.safetensors")
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="corrupt.safetensors"):
        load_delta(tiny_video_model, bad)
    pickle = tmp_path / "unet.bin"
    pickle.write_bytes(b"x")
    with pytest.raises(ValueError, match="only .safetensors"):
        load_delta(tiny_video_model, pickle)
    wrong = tmp_path / "wrong.safetensors"
    save_file({"not.a.key": torch.zeros(1)}, str(wrong))
    with pytest.raises(ValueError, match="not Tune-A-Video UNet keys"):
        load_delta(tiny_video_model, wrong)
    with pytest.raises(ValueError, match="must end with .safetensors"):
        save_delta(tiny_video_model, tmp_path / "x.bin")


def test_unet_hash_ignores_prefix_and_fp16_storage(tiny_unet2d):
    ldm = unet_to_ldm(tiny_unet2d)
    h = unet_hash(ldm)
    assert unet_hash({f"model.diffusion_model.{k}": v for k, v in ldm.items()}) == h
    assert unet_hash({k: v.half() for k, v in ldm.items()}) == h
    changed = dict(ldm, **{"out.2.bias": ldm["out.2.bias"] + 1})
    assert unet_hash(changed) != h


def _held_in(tiny_unet2d, unet_config, dtype, scale=1.0):
    """The base (scaled: another base) held at another precision, e.g. ComfyUI's --bf16-unet, identified from its
    own weights as the nodes do."""
    from tunevideo.modules.build import video_model_from_ldm
    from tunevideo.modules.sampling.schedule import NoiseSchedule

    ldm = {k: (v * scale).to(dtype) for k, v in unet_to_ldm(tiny_unet2d).items()}
    return video_model_from_ldm(ldm, unet_config, NoiseSchedule.scaled_linear())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_same_base_at_another_precision_is_accepted(tuned, tiny_unet2d, tiny_unet_config, tmp_path, dtype):
    """A delta made on an fp32 base loads on the same base held in bf16/fp16, as a delta and as a full
    reference checkpoint; another base at that precision is still refused."""
    path = tmp_path / "delta.safetensors"
    save_delta(tuned, path)
    held = _held_in(tiny_unet2d, tiny_unet_config, dtype)
    assert held.base_hash != tuned.base_hash or dtype == torch.float16
    loaded = load_delta(held, path)
    assert loaded.network.state_dict()[next(iter(tuned.tuned_names))].dtype == dtype
    folder = tmp_path / "full" / "unet"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tuned.network.state_dict().items()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    temporal = set(tuned.network.temporal_parameters())
    assert load_delta(held, tmp_path / "full").tuned_names == tuned.tuned_names | temporal
    other = _held_in(tiny_unet2d, tiny_unet_config, dtype, scale=1.05)
    with pytest.raises(BaseMismatchError, match="tuned from base model"):
        load_delta(other, path)
    with pytest.raises(BaseMismatchError, match="never tunes differ"):
        load_delta(other, tmp_path / "full")


def test_fingerprint_matches_the_same_weights_at_any_storage_precision(tiny_unet2d):
    from tunevideo.modules.convert.identity import fingerprints_match, unet_fingerprint

    ldm = unet_to_ldm(tiny_unet2d)
    ref = unet_fingerprint(ldm)
    chains = [(torch.bfloat16,), (torch.float16,), (torch.float16, torch.bfloat16), (torch.float8_e4m3fn,)]
    for chain in chains:
        held = dict(ldm)
        for dtype in chain:
            held = {k: v.to(dtype) for k, v in held.items()}
        assert fingerprints_match(ref, unet_fingerprint(held)), chain
        assert fingerprints_match(unet_fingerprint({k: v.bfloat16() for k, v in ldm.items()}), unet_fingerprint(held))
    # SD1.5's largest tensors hold ~29M values, past float32's exact integers (a float index ran out of bounds).
    assert unet_fingerprint({"big.weight": torch.ones(1).expand(29_491_200)}) == unet_fingerprint(
        {"big.weight": torch.ones(29_491_200 // 4 + 1)})
    other = unet_fingerprint({k: v * 1.05 for k, v in ldm.items()})
    assert not fingerprints_match(ref, other)
    assert not fingerprints_match(ref, "") and not fingerprints_match(ref, "float32:not-base64!")


def test_loaded_delta_keeps_its_history_through_a_resave(tuned, tiny_video_model, tmp_path):
    first = tmp_path / "first.safetensors"
    meta = save_delta(tuned, first)
    loaded = load_delta(tiny_video_model, first)
    assert loaded.history == tuned.history
    again = save_delta(loaded, tmp_path / "again.safetensors")
    assert again == meta  # method, frames, size, prompt, steps, lr, trainable, history: all kept
    assert again["method"] == "tune-a-video" and again["frames"] == "3" and again["prompt"] == "a man skiing"


def test_unknown_delta_format_is_refused(tuned, tmp_path):
    path = tmp_path / "future.safetensors"
    state = tuned.network.state_dict()
    save_file({k: state[k].contiguous() for k in tuned.delta_names()}, str(path),
              metadata={"format": "tunevideo.delta.v9"})
    with pytest.raises(ValueError, match="tunevideo.delta.v9.*newer"):
        load_delta(tuned, path)


def test_delta_reloads_with_the_attention_it_was_tuned_with(tuned, tiny_video_model, tmp_path):
    p2p = tuned.replace(network=tuned.network.with_attention("video-p2p"))
    path = tmp_path / "p2p.safetensors"
    assert save_delta(p2p, path)["attention"] == "video-p2p"
    loaded = load_delta(tiny_video_model, path)  # a tune-a-video base: switched as the file records
    assert loaded.network.attention == "video-p2p" and tiny_video_model.network.attention == "tune-a-video"
    x = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    c = torch.randn(1, 7, CTX_DIM, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(x, 500, c), p2p.network(x, 500, c), rtol=0, atol=1e-5)
    assert save_delta(loaded, tmp_path / "again.safetensors")["attention"] == "video-p2p"
    state = p2p.network.state_dict()
    save_file({k: state[k].contiguous() for k in p2p.delta_names()}, str(tmp_path / "odd.safetensors"),
              metadata={"attention": "mystery"})
    with pytest.raises(ValueError, match="attention 'mystery'"):
        load_delta(tiny_video_model, tmp_path / "odd.safetensors")


def test_every_weight_reader_names_a_damaged_file_and_says_what_to_do(tiny_video_model, tmp_path):
    """Issue 19: one reader for deltas, LoRAs, motion modules, CLIP scorers and checkpoints."""
    from tunevideo.modules.convert.checkpoint import load_checkpoint
    from tunevideo.modules.evaluation.clip_files import load_clip_model
    from tunevideo.modules.networks.animatediff import read_motion_module
    from tunevideo.modules.training.lora import load_lora

    random = tmp_path / "random.safetensors"
    random.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                     dtype=torch.uint8).numpy().tobytes())
    truncated = tmp_path / "truncated.safetensors"
    save_file({"a": torch.zeros(64, 64)}, str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    readers = [lambda p: load_delta(tiny_video_model, p), read_motion_module,
               lambda p: load_lora(p, tiny_video_model.network, "temporal"), load_clip_model, load_checkpoint]
    for path in (random, truncated):
        for read in readers:
            with pytest.raises(ValueError, match=f"{path.name}: not a readable safetensors file.*download or save "
                                                 f"it again"):
                read(path)


def test_deltas_with_non_finite_tensors_are_refused_and_not_written(tuned, tmp_path):
    name = next(iter(tuned.delta_names()))
    broken = tuned.with_tensors({name: tuned.network.state_dict()[name] * float("nan")})
    with pytest.raises(ValueError, match=f"delta nan.safetensors: .* NaN/infinite values .*{name}"):
        save_delta(broken, tmp_path / "nan.safetensors")
    assert list(tmp_path.iterdir()) == []
