"""Method defaults, each citing its source. Node widgets and the CLI are built from these."""

from __future__ import annotations

from dataclasses import dataclass

SD_LATENT_SCALE = 0.18215  # SD1.x/2.x VAE latent scale (LDM configs: model.params.scale_factor)

TUNE_A_VIDEO_TRAINABLE = ("attn1.to_q", "attn2.to_q", "attn_temp")  # Tune-A-Video, configs/*.yaml trainable_modules


@dataclass(frozen=True)
class TuneAVideoDefaults:
    """Tune-A-Video (Wu et al., ICCV 2023), official configs/man-skiing.yaml and the paper's Sec. 5."""

    n_sample_frames: int = 24  # train_data.n_sample_frames
    width: int = 512  # train_data.width
    height: int = 512  # train_data.height
    sample_start_idx: int = 0  # train_data.sample_start_idx
    sample_frame_rate: int = 2  # train_data.sample_frame_rate (stride in source frames)
    max_train_steps: int = 500  # max_train_steps
    learning_rate: float = 3e-5  # learning_rate
    train_batch_size: int = 1  # train_batch_size
    adam_beta1: float = 0.9  # train_tuneavideo.py defaults
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = True  # gradient_checkpointing
    seed: int = 33  # seed
    num_inv_steps: int = 50  # validation_data.num_inv_steps
    num_inference_steps: int = 50  # validation_data.num_inference_steps
    guidance_scale: float = 12.5  # validation_data.guidance_scale
    eta: float = 0.0  # DDIM, deterministic
    trainable_modules: tuple[str, ...] = TUNE_A_VIDEO_TRAINABLE


TAV = TuneAVideoDefaults()


@dataclass(frozen=True)
class VideoP2PDefaults:
    """Video-P2P (Liu et al., 2023), official configs/rabbit-jump-tune.yaml and configs/rabbit-jump-p2p.yaml, and the
    constants of run_videop2p.py."""

    n_sample_frames: int = 8  # train_data.n_sample_frames
    sample_frame_rate: int = 1  # train_data.sample_frame_rate
    width: int = 512
    height: int = 512
    max_train_steps: int = 500  # rabbit-jump-tune.yaml (car-drive and penguin-run use 300)
    learning_rate: float = 3e-5
    source_prompt: str = "a rabbit is jumping on the grass"  # prompt
    edit_prompt: str = "a origami rabbit is jumping on the grass"  # prompts[1]
    word_swap: bool = False  # is_word_swap
    blend_words: str = "rabbit, rabbit"  # blend_word
    reweight: str = "origami: 2"  # eq_params
    cross_replace_steps: float = 0.2  # run_videop2p.py default
    self_replace_steps: float = 0.5
    blend_threshold: float = 0.3  # mask_th
    steps: int = 50  # NUM_DDIM_STEPS
    guidance_scale: float = 7.5  # GUIDANCE_SCALE


VP2P = VideoP2PDefaults()


@dataclass(frozen=True)
class EI2Defaults:
    """EI² (Zhang et al., NeurIPS 2023, arXiv 2305.17431). The paper builds on Tune-A-Video's one-shot tuning and
    inference (Sec. 4: its settings follow Tune-A-Video), so those values are Tune-A-Video's. The method text with the
    paper's own constants was not available to us: values marked "our choice" are ours (README, modules/ei2.py)."""

    ffam_pool_size: int = 4  # our choice: divides every level of a 64x64 latent (512x512 frames) down to 8x8
    temporal_layer: str = "ei2-stam"
    attention: str = "ei2-ffam"
    max_train_steps: int = 500  # Tune-A-Video's schedule (configs/man-skiing.yaml)
    learning_rate: float = 3e-5
    n_sample_frames: int = 8  # our choice for the workflow (fits 90 s on one H100 with the defaults)
    num_inference_steps: int = 50
    guidance_scale: float = 12.5


EI2 = EI2Defaults()


@dataclass(frozen=True)
class DreamixDefaults:
    """Dreamix (Molad et al., arXiv 2302.01329). The paper runs on Imagen-Video (cascaded pixel-space VDM) and gives
    few numeric settings; values marked "our choice" are ours, exposed as node inputs (README)."""

    image_ratio: float = 0.5  # our choice: Sec. 3.2 mixes video and frame batches with a weight alpha; equal share
    learning_rate: float = 1e-5  # our choice: whole-model finetuning needs a lower rate than TAV's projections
    max_train_steps: int = 300  # our choice
    trainable: str = "dreamix-full"  # Sec. 3.2: the whole video model is finetuned
    #: The shipped workflows' preset (our choice): every attention projection, about 5 GiB at 8 frames 512x512 with
    #: AdamW, so it fits 12 GB GPUs; dreamix-full needs about 15 GiB (AdamW) or 10 GiB (Adafactor), README.
    workflow_trainable: str = "dreamix-attention"
    spatial_downsample: int = 4  # Sec. 3.1 corrupts by downsampling; factor in pixels, our choice for SD's 8x VAE
    temporal_downsample: int = 1  # Sec. 3.1 also lowers the frame rate; off by default
    noise_strength: float = 0.7  # noise scale s in [0, 1] (Sec. 3.1); Fig. 7 explores the range; our default
    num_inference_steps: int = 50
    guidance_scale: float = 7.5  # our choice (SD's usual cfg); the paper's VDM uses its own guidance
    lora_rank: int = 16  # our choice for the LoRA preset
    n_sample_frames: int = 8
    gradient_checkpointing: bool = True  # our choice: the whole-model presets need it on 8-24 GB GPUs
    seed: int = TAV.seed  # our choice: Tune-A-Video's seed (configs/man-skiing.yaml)


DREAMIX = DreamixDefaults()
