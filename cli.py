"""Headless Tune-A-Video: the same engine as the ComfyUI nodes, driven from the command line.

    python -m tunevideo tune-a-video --checkpoint v1-5.safetensors --video clip.mp4 \\
        --source-prompt "a man is skiing" --prompt "mickey mouse is skiing on the snow" --out outputs/edit
    python -m tunevideo demo            # built-in tiny random model + the shipped sample clip (outputs are noise)
    python -m tunevideo self-check      # convert + inflate a tiny model and report what was done
    python -m tunevideo evaluate --clip models/clip_vision/clip-vit-large-patch14 --edits my_edits/
                                        # CLIP frame consistency + text alignment of a set of edits (a table)

Writes ``edited.mp4``, ``edited.webp``, ``contact_sheet.png`` (source row over edited row), ``loss.png``, the tuned
delta ``tuned.safetensors`` and ``summary.json`` into ``--out`` (which must not already contain them).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .modules.build import decode_latents, encode_frames, video_model_from_checkpoint
from .modules.convert.unet import unet_to_ldm
from .modules.defaults import TAV
from .modules.deltas import save_delta
from .modules.files.atomic import atomic_write, unique_path
from .modules.files.plot import loss_curve_image
from .modules.methods.tune_a_video import tune_a_video
from .modules.networks.inflate import inflate_unet
from .modules.sampling.ddim import ddim_invert, sample
from .modules.training.tune import PRECISIONS, TuneConfig

logger = logging.getLogger("tunevideo")
ROOT = Path(__file__).resolve().parent
SAMPLE_CLIP = ROOT / "assets" / "sample" / "man-skiing-16f-128.mp4"
OUTPUTS = ("edited.mp4", "edited.webp", "contact_sheet.png", "loss.png", "tuned.safetensors", "summary.json")


@dataclass(frozen=True)
class EditSettings:
    """Everything one Tune-A-Video edit needs besides the model (defaults: the paper's)."""

    source_prompt: str
    prompt: str
    negative_prompt: str = ""
    frames: int = TAV.n_sample_frames
    start: int = TAV.sample_start_idx
    stride: int = TAV.sample_frame_rate
    width: int = TAV.width
    height: int = TAV.height
    tune_steps: int = TAV.max_train_steps
    learning_rate: float = TAV.learning_rate
    inversion_steps: int = TAV.num_inv_steps
    sampling_steps: int = TAV.num_inference_steps
    cfg: float = TAV.guidance_scale
    seed: int = TAV.seed
    precision: str = "auto"


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _progress(label: str):
    def cb(step, total, info):
        if step == total or step % max(total // 10, 1) == 0:
            loss = f" loss {float(info['loss']):.4f}" if "loss" in info else ""
            logger.info("%s %d/%d%s", label, step, total, loss)
    return cb


def run_edit(checkpoint: Path, video: Path, out: Path, s: EditSettings, device: torch.device,
             tokenizer_dir: str | None = None) -> dict:
    """Load, tune, invert, sample, decode and write all outputs. Returns the summary written to summary.json."""
    from .modules.convert.checkpoint import encode_long_prompt, load_checkpoint
    from .modules.files.video_io import contact_sheet, read_video, write_video

    clash = [name for name in OUTPUTS if (out / name).exists()]
    if clash:
        raise FileExistsError(f"--out {out} already holds {clash}; choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    comp = load_checkpoint(checkpoint, tokenizer_dir=tokenizer_dir)
    frames, fps = read_video(video, start=s.start, count=s.frames, stride=s.stride, width=s.width, height=s.height,
                             callback=_progress("read"))
    vae, text = comp.vae.to(device), comp.text_encoder.to(device)
    latents = encode_frames(vae, frames, comp.latent_scale, callback=_progress("encode"))
    src, empty, edit, neg = (encode_long_prompt(comp, p).float()
                             for p in (s.source_prompt, "", s.prompt, s.negative_prompt))
    text.to("cpu")
    base = video_model_from_checkpoint(comp)
    schedule = base.schedule
    logger.info("loaded %s (%s, %s) and %d frames %dx%d in %.1fs", checkpoint.name, comp.kind,
                comp.prediction_type, frames.shape[0], s.width, s.height, time.perf_counter() - t0)
    config = TuneConfig(steps=s.tune_steps, learning_rate=s.learning_rate, seed=s.seed,
                        mixed_precision=s.precision)
    tuned, curve = tune_a_video(base, latents, src, config, callback=_progress("tune"), device=device,
                                prompt=s.source_prompt)
    fn = tuned.model_fn(device)
    x_t = ddim_invert(fn, schedule, latents.to(device), empty, s.inversion_steps, callback=_progress("invert"))
    gen = torch.Generator().manual_seed(s.seed)
    edited = sample(fn, schedule, x_t, edit, neg, s.sampling_steps, s.cfg, generator=gen,
                    callback=_progress("sample"))
    result = decode_latents(vae, edited, comp.latent_scale, callback=_progress("decode"))
    write_video(result, out / "edited.mp4", fps)
    write_video(result, out / "edited.webp", fps)
    contact_sheet(torch.cat([frames, result]), columns=frames.shape[0], path=out / "contact_sheet.png")
    _save_png(loss_curve_image(curve, title="tune loss"), out / "loss.png")
    save_delta(tuned, out / "tuned.safetensors")
    summary = {"checkpoint": str(checkpoint), "video": str(video), "settings": asdict(s), "device": str(device),
               "base_model_hash": base.base_hash, "fps": fps, "loss_first": curve[0], "loss_last": curve[-1],
               "seconds": round(time.perf_counter() - t0, 1), "outputs": list(OUTPUTS)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    logger.info("wrote %s in %.1fs", ", ".join(OUTPUTS), summary["seconds"])
    return summary


def _save_png(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    png = Image.fromarray((image[0].numpy() * 255).round().astype("uint8"))
    atomic_write(path, lambda tmp: png.save(tmp, format="PNG"))


def self_check() -> dict:
    """Convert a tiny random SD1-layout UNet from LDM keys, inflate it, and check the key invariants."""
    from .modules.convert.unet import unet_from_ldm
    from .tiny import TINY_UNET_CONFIG, tiny_unet2d

    cfg = TINY_UNET_CONFIG
    ldm = unet_to_ldm(tiny_unet2d(cfg, seed=0))
    unet = unet_from_ldm(ldm, cfg)
    video = inflate_unet(unet)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 4, 4, 16, 16, generator=g), torch.tensor([500])
    c = torch.randn(1, 8, cfg["context_dim"], generator=g)
    with torch.no_grad():
        one = (video(x[:, :, :1], t, c)[:, :, 0] - unet(x[:, :, 0], t, c).sample).abs().max().item()
        out = video(x, t, c)
    report = {"ldm_keys": len(ldm), "video_unet_keys": len(video.state_dict()),
              "temporal_tensors": len(video.temporal_parameters()),
              "params_2d_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 2),
              "one_frame_max_diff_vs_2d": one, "video_output_shape": list(out.shape)}
    if one > 1e-4:
        raise RuntimeError(f"self-check failed: one-frame output differs from the 2D UNet by {one}")
    return report


def demo(out: Path, device: torch.device) -> dict:
    """Tune-A-Video end to end on a built-in tiny random model and the shipped sample clip."""
    from .tiny import write_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "tiny-sd15-random.safetensors"
        write_tiny_checkpoint(ckpt, seed=0)
        settings = EditSettings(source_prompt="a man is skiing", prompt="mickey mouse is skiing on the snow",
                                frames=8, stride=1, width=64, height=64, tune_steps=30, learning_rate=1e-3,
                                inversion_steps=10, sampling_steps=10, cfg=7.5)
        logger.info("demo: tiny RANDOM-weight model, so the edited video is noise; see README for a real run")
        return run_edit(ckpt, SAMPLE_CLIP, out, settings, device)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunevideo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("tune-a-video", help="edit a video with Tune-A-Video")
    e.add_argument("--checkpoint", required=True, type=Path, help="SD1.x/2.x single-file .safetensors")
    e.add_argument("--video", required=True, type=Path)
    e.add_argument("--source-prompt", required=True)
    e.add_argument("--prompt", required=True, help="the edited prompt")
    e.add_argument("--negative-prompt", default="")
    e.add_argument("--out", required=True, type=Path)
    e.add_argument("--tokenizer", default=None, help="folder with vocab.json + merges.txt (default: "
                                                     "$COMFYUI_PATH/comfy/sd1_tokenizer)")
    d = EditSettings("", "")
    for name in ("frames", "start", "stride", "width", "height", "tune_steps", "inversion_steps", "sampling_steps",
                 "seed"):
        e.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("learning_rate", "cfg"):
        e.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    e.add_argument("--precision", choices=PRECISIONS, default="auto")
    e.add_argument("--device", default="auto")
    m = sub.add_parser("demo", help="run the whole pipeline on a built-in tiny random model")
    m.add_argument("--out", type=Path, default=None, help="default: a new outputs/demo_NNNNN folder")
    m.add_argument("--device", default="auto")
    sub.add_parser("self-check", help="convert and inflate a tiny model, print what was done")
    v = sub.add_parser("evaluate", help="CLIP frame consistency / text alignment of a set of edits, as a table")
    v.add_argument("--clip", required=True, type=Path, help="CLIP folder (config.json + model.safetensors) or "
                                                            ".safetensors file (the papers: ViT-L/14)")
    v.add_argument("--edits", required=True, type=Path, help="folder with manifest.json/.csv, or the manifest")
    v.add_argument("--out", type=Path, default=None, help="where the new clip_eval_NNNNN folder goes (default: "
                                                          "the manifest's folder)")
    v.add_argument("--tokenizer", default=None, help="tokenizer folder for a single-file CLIP without one beside it")
    v.add_argument("--max-frames", type=int, default=0, help="score the first N frames of each video (0: all)")
    v.add_argument("--batch-size", type=int, default=16)
    v.add_argument("--device", default="auto")
    return p


def evaluate(args) -> dict:
    """Score every edit of the set with one CLIP and write the report (modules/clip_eval.py)."""
    from .modules.evaluation.clip_eval import evaluate_edits, load_manifest, manifest_path, summarize, write_report
    from .modules.evaluation.clip_files import load_clip_model

    if args.max_frames < 0 or args.batch_size < 1:
        raise SystemExit("--max-frames must be >= 0 and --batch-size >= 1")
    edits = load_manifest(args.edits)
    clip = load_clip_model(args.clip, tokenizer_dir=args.tokenizer)
    clip.require_text()

    def progress(step, total, info):
        logger.info("scored %d/%d %s: text alignment %.2f", step, total, info["name"], info["text_alignment"])

    rows = evaluate_edits(clip, edits, _device(args.device), args.max_frames, args.batch_size, callback=progress)
    folder = write_report(args.out or manifest_path(args.edits).parent, rows, clip.describe())
    logger.info("wrote %s", folder)
    return {"report": str(folder), "model": clip.describe(), "methods": summarize(rows)}


class UsageError(SystemExit):
    """A user error: its message is printed as one line and the CLI exits with status 2 (as argparse does)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.code = 2


def _user_error_types() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    return (OSError, ValueError, SafetensorError)


def _hint(exc: BaseException) -> str:
    from .modules.convert.text_encoder import TokenizerNotFoundError

    if isinstance(exc, TokenizerNotFoundError):
        return ""  # the message already says what to pass
    if isinstance(exc, OSError) and getattr(exc, "filename", None):
        return " (check the path)"
    return ""


def main(argv: list[str] | None = None) -> int:
    """Run one command. User errors print one line on stderr and exit with status 2 (``--debug``: the traceback)."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except SystemExit as exc:
        if args.debug or exc.code is None or isinstance(exc.code, int):
            raise
        message = str(exc.code)
    except (*_user_error_types(),) as exc:
        if args.debug:
            raise
        message = f"{exc}{_hint(exc)}"
    except Exception as exc:  # a bug, not a user error: still one line, and how to see more
        if args.debug:
            raise
        sys.stderr.write(f"tunevideo: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the "
                         f"traceback and report it)\n")
        raise SystemExit(1) from None
    sys.stderr.write(f"tunevideo: error: {message.splitlines()[0] if message else 'failed'}\n")
    raise UsageError(message) from None


def _run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    if args.command == "self-check":
        result = self_check()
    elif args.command == "evaluate":
        result = evaluate(args)
    elif args.command == "demo":
        result = demo(args.out or unique_path("outputs", "demo"), _device(args.device))
    else:
        if not args.checkpoint.is_file():
            raise SystemExit(f"--checkpoint {args.checkpoint} not found; pass the path of an SD1.x/SD2.x "
                             f".safetensors checkpoint")
        if not args.video.is_file():
            raise SystemExit(f"--video {args.video} not found; pass the path of a video file")
        fields = {k: getattr(args, k) for k in EditSettings.__dataclass_fields__}
        result = run_edit(args.checkpoint, args.video, args.out, EditSettings(**fields), _device(args.device),
                          tokenizer_dir=args.tokenizer)
    sys.stdout.write(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
