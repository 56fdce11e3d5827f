"""Headless SD1.x/SD2.x single-file loading: tiny checkpoint round trip, VAE / CLIP / OpenCLIP conversions checked
against independent references, prompt encoding, prediction-type rule, schedule and clear errors."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from conftest import make_unet2d
from safetensors.torch import load_file, save_file
from tunevideo import tiny as tiny_model
from tunevideo.modules.convert import checkpoint as sf
from tunevideo.modules.convert.identity import unet_hash
from tunevideo.modules.convert.unet import UnsupportedModelError, unet_to_ldm
from tunevideo.modules.sampling.schedule import NoiseSchedule
from tunevideo.tiny import TINY_MARKER as TINY


def _equal_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    bad = [k for k in sa if sa[k].dtype != sb[k].dtype or not torch.equal(sa[k], sb[k])]
    assert not bad, bad[:5]


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny-sd15.safetensors"
    meta = tiny_model.write_tiny_checkpoint(path, seed=0)
    return path, meta


@pytest.fixture(scope="module")
def tiny(tiny_file):
    return sf.load_checkpoint(tiny_file[0])


@pytest.fixture(scope="module")
def tiny_tensors(tiny_file):
    return load_file(tiny_file[0])


def _variant(tensors, tmp_path, name="variant.safetensors", metadata=None, drop=(), add=None):
    out = {k: v for k, v in tensors.items() if not k.startswith(tuple(drop))} if drop else dict(tensors)
    out.update(add or {})
    path = tmp_path / name
    save_file(out, str(path), metadata=metadata)
    return path


# ------------------------------------------------------------------------------------------------- tiny checkpoint
def test_tiny_checkpoint_round_trip_is_bit_identical(tiny_file, tiny):
    path, meta = tiny_file
    unet, vae, text = tiny_model.tiny_modules(seed=0)
    _equal_state(unet, tiny.unet)
    _equal_state(vae, tiny.vae)
    _equal_state(text, tiny.text_encoder)
    assert tiny.kind == "sd1" and tiny.prediction_type == "epsilon" and tiny.text_layer == -1
    assert tiny.latent_scale == 0.18215 and tiny.metadata[TINY] == "1" and tiny.path == path
    assert tiny.alphas_cumprod.dtype == torch.float64 and tiny.alphas_cumprod.shape == (1000,)
    assert torch.equal(tiny.alphas_cumprod, NoiseSchedule.scaled_linear().alphas_cumprod)
    # one hash for the file, the written modules and ComfyUI-style bare keys
    assert tiny.sha256_short == meta["unet_hash"] == unet_hash(unet_to_ldm(tiny.unet)) == unet_hash(unet_to_ldm(unet))
    assert len(tiny.sha256_short) == 16
    # same modules, same behaviour (the head count read off the weights is the one written)
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 64, generator=g)
    img = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    ids = torch.randint(0, 514, (1, 77), generator=g)
    # The weights are bit-identical (above); outputs agree to float rounding only, because CPU kernels pick their
    # vector paths by memory alignment, which differs between freshly built and file-backed tensors.
    close = dict(rtol=0, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(unet(x, 10, c).sample, tiny.unet(x, 10, c).sample, **close)
        torch.testing.assert_close(vae.encode(img).latent_dist.mean, tiny.vae.encode(img).latent_dist.mean, **close)
        torch.testing.assert_close(text(ids).last_hidden_state, tiny.text_encoder(ids).last_hidden_state, **close)


def test_tiny_checkpoint_layout_and_determinism(tiny_file, tiny_tensors, tmp_path):
    path, meta = tiny_file
    assert "model.diffusion_model.input_blocks.1.1.proj_in.weight" in tiny_tensors
    assert tiny_tensors["first_stage_model.encoder.mid.attn_1.q.weight"].dim() == 4  # LDM 1x1-conv attention
    assert "first_stage_model.decoder.up.0.block.2.conv1.weight" in tiny_tensors  # layers_per_block + 1 in decoder
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in tiny_tensors
    assert tiny_tensors["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"].shape == (514, 64)
    again = tmp_path / "again.safetensors"
    assert tiny_model.write_tiny_checkpoint(again, seed=0) == meta
    second = load_file(again)
    assert second.keys() == tiny_tensors.keys() and all(torch.equal(second[k], tiny_tensors[k]) for k in second)
    with pytest.raises(FileExistsError, match="again.safetensors"):
        tiny_model.write_tiny_checkpoint(again, seed=1)
    assert tiny_model.write_tiny_checkpoint(again, seed=1, overwrite=True)["unet_hash"] != meta["unet_hash"]
    with pytest.raises(ValueError, match="safetensors"):
        tiny_model.write_tiny_checkpoint(tmp_path / "tiny.ckpt")


def test_fp16_load_keeps_hash(tiny_file, tiny):
    half = sf.load_checkpoint(tiny_file[0], dtype=torch.float16)
    assert {p.dtype for m in (half.unet, half.vae, half.text_encoder) for p in m.parameters()} == {torch.float16}
    assert half.sha256_short == tiny.sha256_short
    assert half.alphas_cumprod.dtype == torch.float64


# ------------------------------------------------------------------------------------------------------------ VAE
def _random_vae(seed=0, channels=(32, 64), layers=1):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    n = len(channels)
    vae = AutoencoderKL(down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
                        block_out_channels=list(channels), layers_per_block=layers, latent_channels=4).eval()
    tiny_model.perturb_norms(vae)
    return vae


@pytest.mark.parametrize("channels,layers", [((32, 64), 1), ((32, 32, 64), 2)])
def test_vae_round_trip_exact_and_same_outputs(channels, layers):
    vae = _random_vae(channels=channels, layers=layers)
    ldm = sf.vae_to_ldm(vae)
    assert all(k.startswith("first_stage_model.") for k in ldm)
    assert ldm["first_stage_model.decoder.mid.attn_1.proj_out.weight"].shape[2:] == (1, 1)
    cfg = sf.vae_config_from_ldm(ldm)
    assert cfg["block_out_channels"] == list(channels) and cfg["layers_per_block"] == layers
    back = sf.vae_from_ldm(ldm)
    _equal_state(vae, back)
    g = torch.Generator().manual_seed(0)
    z, img = torch.randn(2, 4, 4, 4, generator=g), torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    with torch.no_grad():
        assert torch.equal(vae.decode(z).sample, back.decode(z).sample)
        assert torch.equal(vae.encode(img).latent_dist.mean, back.encode(img).latent_dist.mean)
    # without the checkpoint prefix too
    _equal_state(vae, sf.vae_from_ldm({k.removeprefix("first_stage_model."): v for k, v in ldm.items()}))


def test_vae_ldm_names_agree_with_diffusers_reference_converter():
    """diffusers' own LDM->diffusers VAE converter (an independent reference) reads our LDM keys back exactly."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae = _random_vae(channels=(32, 32, 64), layers=2)
    ref = convert_ldm_vae_checkpoint(sf.vae_to_ldm(vae), dict(vae.config))
    own = vae.state_dict()
    assert ref.keys() == own.keys()
    assert all(torch.equal(ref[k].reshape(own[k].shape), own[k]) for k in own)


def test_vae_errors_name_the_problem():
    ldm = sf.vae_to_ldm(_random_vae())
    with pytest.raises(UnsupportedModelError, match="lacks 1 weights"):
        sf.vae_from_ldm({k: v for k, v in ldm.items() if k != "first_stage_model.encoder.mid.attn_1.k.bias"})
    with pytest.raises(UnsupportedModelError, match="no LDM KL-autoencoder"):
        sf.vae_from_ldm({"foo.weight": torch.zeros(1)})


# ---------------------------------------------------------------------------------------------- SD1 text encoder
def test_text_encoder_round_trip_and_legacy_keys(tiny):
    text = tiny.text_encoder
    ldm = sf.text_encoder_to_ldm(text)
    assert all(k.startswith("cond_stage_model.transformer.text_model.") for k in ldm)
    _equal_state(text, sf.text_encoder_from_ldm(ldm))
    legacy = {k.replace("text_model.", ""): v for k, v in ldm.items()}  # old transformers naming
    legacy["cond_stage_model.transformer.embeddings.position_ids"] = torch.arange(77)[None]
    back = sf.text_encoder_from_ldm(legacy)
    _equal_state(text, back)
    assert back.config.hidden_act == "quick_gelu" and back.config.num_attention_heads == 1
    assert back.config.vocab_size == 514 and back.config.max_position_embeddings == 77


# ------------------------------------------------------------------------------------------------ tokenizer / prompt
def test_byte_tokenizer_ids_fit_and_pad():
    tok = sf.byte_tokenizer()
    assert len(tok) == 514
    ids = sf.tokenize(tok, ["a man is skiing", "", "Ünïcödé 😀 " * 20])
    assert ids.shape == (3, 77) and ids.dtype == torch.long
    assert int(ids.max()) < 514 and int(ids.min()) >= 0
    assert (ids[:, 0] == 512).all()  # <|startoftext|>
    assert ids[1, 1:].eq(513).all()  # empty prompt: end token, then end-token padding (SD1)
    assert ids[2, -1] == 513  # truncated, end token kept
    assert sf.tokenize(sf.byte_tokenizer("sd2"), ["ab"])[0, 4:].eq(0).all()  # OpenCLIP pads with 0


def test_encode_prompt_shape_and_determinism(tiny):
    prompts = ["a man is skiing", "mickey mouse is skiing on the snow", ""]
    a = sf.encode_prompt(tiny, prompts)
    assert a.shape == (3, 77, 64) and a.dtype == torch.float32
    assert torch.equal(a, sf.encode_prompt(tiny, prompts))
    torch.testing.assert_close(a[1:2], sf.encode_prompt(tiny, prompts[1:2]))  # batch rows are independent
    assert not torch.allclose(a[0], a[1])
    with pytest.raises(TypeError, match="list of strings"):
        sf.encode_prompt(tiny, "a man")
    with pytest.raises(ValueError, match="empty"):
        sf.encode_prompt(tiny, [])


# --------------------------------------------------------------------------------------------- SD2 OpenCLIP encoder
def make_open_clip(width=128, layers=3, vocab=514, positions=77, seed=0):
    """Random OpenCLIP text-transformer state dict (``cond_stage_model.model.`` layout, as in SD2 checkpoints)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=0.05):
        return torch.randn(*shape, generator=g) * s

    sd = {"token_embedding.weight": r(vocab, width, s=0.5), "positional_embedding": r(positions, width, s=0.2),
          "ln_final.weight": 1 + r(width, s=0.1), "ln_final.bias": r(width), "text_projection": r(width, width),
          "logit_scale": torch.tensor(4.6)}
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        sd.update({p + "ln_1.weight": 1 + r(width, s=0.1), p + "ln_1.bias": r(width),
                   p + "attn.in_proj_weight": r(3 * width, width, s=0.2), p + "attn.in_proj_bias": r(3 * width),
                   p + "attn.out_proj.weight": r(width, width, s=0.2), p + "attn.out_proj.bias": r(width),
                   p + "ln_2.weight": 1 + r(width, s=0.1), p + "ln_2.bias": r(width),
                   p + "mlp.c_fc.weight": r(4 * width, width, s=0.2), p + "mlp.c_fc.bias": r(4 * width),
                   p + "mlp.c_proj.weight": r(width, 4 * width, s=0.2), p + "mlp.c_proj.bias": r(width)})
    return {"cond_stage_model.model." + k: v for k, v in sd.items()}


def open_clip_reference(sd, ids, heads, skip_last):
    """Our own OpenCLIP text transformer: pre-LN blocks with torch.nn.MultiheadAttention on the fused in_proj weights,
    causal mask, exact GELU MLP; ``skip_last`` stops before the last block (SD2's penultimate layer); then ln_final."""
    sd = {k.removeprefix("cond_stage_model.model."): v for k, v in sd.items()}
    width = sd["token_embedding.weight"].shape[1]
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer.resblocks."))
    n = ids.shape[1]
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][:n]
    mask = torch.full((n, n), float("-inf")).triu(1)
    for i in range(layers - 1 if skip_last else layers):
        p = f"transformer.resblocks.{i}."
        mha = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        mha.load_state_dict({"in_proj_weight": sd[p + "attn.in_proj_weight"],
                             "in_proj_bias": sd[p + "attn.in_proj_bias"],
                             "out_proj.weight": sd[p + "attn.out_proj.weight"],
                             "out_proj.bias": sd[p + "attn.out_proj.bias"]})
        h = F.layer_norm(x, (width,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        x = x + mha(h, h, h, attn_mask=mask, need_weights=False)[0]
        h = F.layer_norm(x, (width,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        h = F.gelu(F.linear(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"]))
        x = x + F.linear(h, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
    return F.layer_norm(x, (width,), sd["ln_final.weight"], sd["ln_final.bias"])


def test_open_clip_conversion_matches_reference_transformer():
    sd = make_open_clip(width=128, layers=3)
    model = sf.text_encoder_from_open_clip(sd)
    assert model.config.hidden_act == "gelu" and model.config.num_attention_heads == 2
    assert model.config.num_hidden_layers == 3 and model.config.intermediate_size == 512
    w = sd["cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight"]
    state = {k.removeprefix("text_model."): v for k, v in model.state_dict().items()}
    for j, name in enumerate("qkv"):  # fused rows are q, k, v in that order
        assert torch.equal(state[f"encoder.layers.1.self_attn.{name}_proj.weight"], w[j * 128:(j + 1) * 128])
    ids = sf.tokenize(sf.byte_tokenizer("sd2"), ["a man is skiing", "mickey mouse"])
    with torch.no_grad():
        for layer, skip in ((-2, True), (-1, False)):
            ours = sf.encode_tokens(model, ids, text_layer=layer)
            ref = open_clip_reference(sd, ids, heads=2, skip_last=skip)
            torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)
        assert not torch.allclose(sf.encode_tokens(model, ids, -2), sf.encode_tokens(model, ids, -1))


def test_open_clip_key_mapping_agrees_with_diffusers_reference_converter():
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    sd = make_open_clip(width=128, layers=2)
    model = sf.text_encoder_from_open_clip(sd)
    ref = {k.removeprefix("text_model."): v for k, v in convert_open_clip_checkpoint(model, sd).items()}
    own = {k.removeprefix("text_model."): v for k, v in model.state_dict().items()}
    assert ref.keys() == own.keys() and all(torch.equal(ref[k], own[k]) for k in own)


SD2_UNET = {"in_channels": 4, "out_channels": 4, "model_channels": 64, "channel_mult": [1, 2],
            "num_res_blocks": [1, 1], "transformer_depth": [1, 1], "transformer_depth_middle": 1,
            "context_dim": 128, "num_heads": -1, "num_head_channels": 64, "use_linear_in_transformer": True,
            "adm_in_channels": None}


@pytest.fixture(scope="module")
def sd2_file(tmp_path_factory, tiny_tensors):
    folder = tmp_path_factory.mktemp("sd2")
    vae = {k: v for k, v in tiny_tensors.items() if k.startswith("first_stage_model.")}
    tensors = {**unet_to_ldm(make_unet2d(SD2_UNET, seed=2), prefix="model.diffusion_model."), **vae,
               **make_open_clip(width=128, layers=3)}
    path = folder / "tiny-sd2.safetensors"
    save_file(tensors, str(path))
    return path, sf.write_byte_tokenizer(folder / "tokenizer")


def test_sd2_checkpoint_loads_with_penultimate_layer_and_v_prediction(sd2_file, caplog):
    path, tok_dir = sd2_file
    with caplog.at_level(logging.WARNING):
        comp = sf.load_checkpoint(path, tokenizer_dir=tok_dir)
    assert comp.kind == "sd2" and comp.text_layer == -2 and comp.prediction_type == "v_prediction"
    assert "prediction_type='epsilon'" in caplog.text  # the SD2 512-base caveat is spelled out
    assert comp.unet.config.use_linear_projection and comp.unet.config.cross_attention_dim == 128
    emb = sf.encode_prompt(comp, ["a man is skiing"])
    assert emb.shape == (1, 77, 128)
    ids = sf.tokenize(comp.tokenizer, ["a man is skiing"])
    assert ids[0, -1] == 0  # OpenCLIP padding
    ref = open_clip_reference(make_open_clip(width=128, layers=3), ids, heads=2, skip_last=True)
    torch.testing.assert_close(emb, ref, atol=2e-5, rtol=1e-4)
    assert sf.load_checkpoint(path, prediction_type="epsilon", tokenizer_dir=tok_dir).prediction_type == "epsilon"


# ----------------------------------------------------------------------------------- prediction type and schedule
@pytest.mark.parametrize("metadata,add,expected", [
    ({"modelspec.prediction_type": "v"}, None, "v_prediction"),
    ({"prediction_type": "v_prediction"}, None, "v_prediction"),
    (None, {"v_pred": torch.tensor([])}, "v_prediction"),
    (None, None, "epsilon"),
])
def test_prediction_type_markers(tiny_tensors, tmp_path, metadata, add, expected):
    meta = {TINY: "1", **(metadata or {})}
    path = _variant(tiny_tensors, tmp_path, metadata=meta, add=add)
    assert sf.load_checkpoint(path).prediction_type == expected
    other = "epsilon" if expected == "v_prediction" else "v_prediction"
    assert sf.load_checkpoint(path, prediction_type=other).prediction_type == other


def test_checkpoint_schedule_is_used_when_it_differs(tiny_tensors, tmp_path):
    own = NoiseSchedule.scaled_linear(beta_start=0.0001, beta_end=0.02).alphas_cumprod
    path = _variant(tiny_tensors, tmp_path, metadata={TINY: "1"}, add={"alphas_cumprod": own.float()})
    got = sf.load_checkpoint(path).alphas_cumprod
    assert got.dtype == torch.float64 and torch.equal(got, own.float().double())
    half = _variant(tiny_tensors, tmp_path, "half.safetensors", metadata={TINY: "1"},
                    add={"alphas_cumprod": NoiseSchedule.scaled_linear().alphas_cumprod.half()})
    assert torch.equal(sf.load_checkpoint(half).alphas_cumprod, NoiseSchedule.scaled_linear().alphas_cumprod)
    no_key = _variant(tiny_tensors, tmp_path, "nokey.safetensors", metadata={TINY: "1"},
                      drop=("alphas_cumprod",))
    assert torch.equal(sf.load_checkpoint(no_key).alphas_cumprod, NoiseSchedule.scaled_linear().alphas_cumprod)


# -------------------------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_sources(tiny_tensors, tmp_path, monkeypatch):
    plain = _variant(tiny_tensors, tmp_path, "plain.safetensors")  # no tiny marker: needs a real tokenizer
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    from tunevideo.modules.convert import text_encoder

    monkeypatch.setattr(text_encoder, "installed_bpe_vocabulary", lambda: None)  # no installed CLIP vocabulary either
    with pytest.raises(sf.TokenizerNotFoundError, match="tokenizer_dir.*COMFYUI_PATH"):
        sf.load_checkpoint(plain)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        sf.load_checkpoint(plain, tokenizer_dir=tmp_path / "nowhere")
    sf.write_byte_tokenizer(tmp_path / "comfy" / "comfy" / "sd1_tokenizer")
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "comfy"))
    assert len(sf.load_checkpoint(plain).tokenizer) == 514
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "empty"))
    with pytest.raises(sf.TokenizerNotFoundError, match="sd1_tokenizer"):
        sf.load_checkpoint(plain)
    comp = sf.load_checkpoint(plain, tokenizer_dir=tmp_path / "comfy" / "comfy" / "sd1_tokenizer")
    assert sf.encode_prompt(comp, ["x"]).shape == (1, 77, 64)


# ----------------------------------------------------------------------------------------------------------- errors
def test_missing_corrupt_and_pickle_files_are_named(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        sf.load_checkpoint(missing)
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match="broken.safetensors.*not a readable safetensors"):
        sf.load_checkpoint(bad)
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"PK\x03\x04 would be unpickled")
    with pytest.raises(ValueError, match="model.ckpt.*only .safetensors"):
        sf.load_checkpoint(pickle)
    with pytest.raises(ValueError, match="prediction_type"):
        sf.load_checkpoint(pickle.with_suffix(".safetensors"), prediction_type="x")  # checked before reading
    with pytest.raises(ValueError, match="folder"):
        sf.load_checkpoint(tmp_path)


def test_unsupported_layouts_name_what_was_found(tiny_tensors, tmp_path):
    xl = {"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.ones(4),
          "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}
    save_file(xl, str(tmp_path / "sdxl.safetensors"))
    with pytest.raises(UnsupportedModelError, match="sdxl.safetensors.*conditioner.embedders"):
        sf.load_checkpoint(tmp_path / "sdxl.safetensors")
    save_file({"lora_unet_down_blocks_0.alpha": torch.ones(1)}, str(tmp_path / "lora.safetensors"))
    with pytest.raises(UnsupportedModelError, match="lora.safetensors.*no model.diffusion_model.*lora_unet"):
        sf.load_checkpoint(tmp_path / "lora.safetensors")
    no_text = _variant(tiny_tensors, tmp_path, "notext.safetensors", drop=("cond_stage_model.",))
    with pytest.raises(UnsupportedModelError, match="no text encoder"):
        sf.load_checkpoint(no_text)
    no_vae = _variant(tiny_tensors, tmp_path, "novae.safetensors", metadata={TINY: "1"},
                      drop=("first_stage_model.",))
    with pytest.raises(UnsupportedModelError, match="novae.safetensors.*autoencoder"):
        sf.load_checkpoint(no_vae)


def test_long_prompts_are_windowed_as_comfyui_does(tiny):
    """75 tokens per window between start/end tokens, windows joined: no truncation, and short prompts unchanged."""
    short = "a man is skiing"
    torch.testing.assert_close(sf.encode_long_prompt(tiny, short), sf.encode_prompt(tiny, [short]), rtol=0, atol=0)
    ids = sf.token_windows(tiny.tokenizer, "x" * 100)  # the byte tokenizer: one token per character
    assert ids.shape == (2, 77) and ids[0, 0] == ids[1, 0] and ids[0, 76] == ids[1, 26]  # start ... end, padded
    long = sf.encode_long_prompt(tiny, "x" * 100)
    assert long.shape == (1, 154, 64)
    torch.testing.assert_close(long[:, :77], sf.encode_prompt(tiny, ["x" * 100]), rtol=0, atol=1e-6)  # window 1
    assert sf.encode_long_prompt(tiny, "").shape == (1, 77, 64)
