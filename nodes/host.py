"""The one place that touches ComfyUI. Everything here also works without a host (tests, headless use)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ..modules.files import PICKLE_SUFFIXES

logger = logging.getLogger(__name__)

try:  # ComfyUI present
    import comfy.model_management as _mm
    import comfy.patcher_extension as _pe
    import comfy.utils as _cu
    import folder_paths as _fp
except ImportError:  # tests and headless use
    _mm = _cu = _fp = _pe = None

MODEL_FOLDER = "tunevideo"
MOTION_MODULE_FOLDER = "animatediff_models"  # AnimateDiff-Evolved's folder name: its files show in our lists too
MOTION_LORA_FOLDER = "animatediff_motion_lora"  # AnimateDiff-Evolved's motion-LoRA folder
LORA_FOLDER = "loras"  # ComfyUI core's LoraLoader folder
#: folder name -> (extensions, extra sub-folder of models/tunevideo searched too)
FOLDERS = {
    MODEL_FOLDER: ({".safetensors"}, None),
    MOTION_MODULE_FOLDER: ({".safetensors", *PICKLE_SUFFIXES}, "motion_modules"),  # pickles: plain weights only
    MOTION_LORA_FOLDER: ({".safetensors"}, None),
    LORA_FOLDER: ({".safetensors"}, None),
}
_EXTENSIONS = FOLDERS[MODEL_FOLDER][0]


def has_host() -> bool:
    return _fp is not None


def _fallback_root() -> Path:
    return Path(os.environ.get("TUNEVIDEO_HOME", Path.cwd() / "tunevideo_data"))


def register_model_folder() -> None:
    """Register the pack's model folders with ComfyUI's ``folder_paths`` (idempotent): ``models/tunevideo``, and
    ``models/animatediff_models`` (+ ``models/tunevideo/motion_modules``) and ``models/animatediff_motion_lora``
    where AnimateDiff-Evolved has not registered them already (their paths are then extended, never replaced)."""
    if _fp is None:
        return
    for folder, (exts, extra) in FOLDERS.items():
        paths = [os.path.join(_fp.models_dir, folder)]
        if extra:
            paths.append(os.path.join(_fp.models_dir, MODEL_FOLDER, extra))
        if folder in _fp.folder_names_and_paths:
            old, old_exts = _fp.folder_names_and_paths[folder]
            old = list(old)
            _fp.folder_names_and_paths[folder] = (old + [p for p in paths if p not in old], set(old_exts) | exts)
        else:
            _fp.folder_names_and_paths[folder] = (paths, set(exts))


def model_dir(folder: str = MODEL_FOLDER) -> Path:
    """Where files of ``folder`` are written: its first registered path."""
    if _fp is None:
        return _fallback_root() / "models" / folder
    register_model_folder()
    return Path(_fp.get_folder_paths(folder)[0])


def list_models(folder: str = MODEL_FOLDER) -> list[str]:
    if _fp is None:
        root = model_dir(folder)
        exts = FOLDERS.get(folder, (_EXTENSIONS, None))[0]
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in exts) if root.exists() else []
    register_model_folder()
    return _fp.get_filename_list(folder)


def model_path(name: str, folder: str = MODEL_FOLDER) -> Path:
    """Full path of a file listed by :func:`list_models`; FileNotFoundError naming it otherwise."""
    if _fp is not None:
        full = _fp.get_full_path(folder, name)
        if full:
            return Path(full)
    else:
        full = model_dir(folder) / name
        if full.is_file():
            return full
    raise FileNotFoundError(f"{name!r} not found in models/{folder}")


def input_dir() -> Path:
    return Path(_fp.get_input_directory()) if _fp is not None else _fallback_root() / "input"


_ANNOTATIONS = {" [input]": "input", " [output]": "output", " [temp]": "temp"}


def _annotated(name: str) -> tuple[str, Path]:
    """``name`` without ComfyUI's ``[input]``/``[output]``/``[temp]`` annotation, and the folder it names."""
    for suffix, folder in _ANNOTATIONS.items():
        if name.endswith(suffix) and _fp is not None:
            return name[: -len(suffix)], Path(getattr(_fp, f"get_{folder}_directory")())
    return name, input_dir()


def input_path(name: str, what: str = "video") -> Path:
    """Resolve a file picked in an upload widget (``name`` may carry ComfyUI's ``[input]`` annotation). Only files
    inside ComfyUI's input folder (or the folder the annotation names) are read: absolute paths and ``..`` escapes
    are refused before anything is looked up, so the message never says whether a file exists elsewhere."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what} must be the name of a file in ComfyUI's input folder, got "
                         f"{type(name).__name__} {name!r}")
    clean, base = _annotated(name)
    inside = base.resolve()
    path = (inside / clean).resolve()
    if os.path.isabs(clean) or ".." in Path(clean).parts or not path.is_relative_to(inside):
        raise ValueError(f"{what} {name!r} must be a file inside ComfyUI's input folder (absolute paths and '..' "
                         f"are refused); upload the file or copy it into the input folder")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {name!r} not found in ComfyUI's input folder")
    return path


def list_inputs(extensions: tuple[str, ...]) -> list[str]:
    root = input_dir()
    if not root.is_dir():
        return []
    return sorted(f.name for f in root.iterdir() if f.is_file() and f.suffix.lower() in extensions)


def torch_device() -> torch.device:
    if _mm is not None:
        return _mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_device() -> torch.device:
    """Where idle models wait (ComfyUI's UNet offload device; the CPU without a host)."""
    if _mm is not None:
        return _mm.unet_offload_device()
    return torch.device("cpu")


def free_accelerator() -> None:
    """Unload other models so tuning or sampling has the accelerator to itself (ComfyUI reloads them on demand)."""
    if _mm is not None:
        _mm.unload_all_models()
        _mm.soft_empty_cache()


def apply_patches(model) -> None:
    """If ``model`` (a ModelPatcher) carries patches (LoRAs, ...), have ComfyUI load it so they are baked into the
    weights its ``diffusion_model`` exposes. ``force_patch_weights``: when the model does not fit the GPU, ComfyUI
    otherwise leaves some modules unpatched and applies their patches in its own forward, which we never run (its
    checkpoint save forces the patch the same way)."""
    if _mm is not None and getattr(model, "patches", None):
        _mm.load_models_gpu([model], force_patch_weights=True)


def diffusion_model(model):
    """The MODEL's own diffusion model, even while a clone's object patch (ours) is installed in the shared
    BaseModel: ComfyUI keeps the original in the patchers' shared backup."""
    get = getattr(model, "get_model_object", None)
    return get("diffusion_model") if callable(get) else model.model.diffusion_model


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of ``module``'s parameters and buffers, as ComfyUI's ``module_size`` counts them."""
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())


def video_model_patcher(model, module: torch.nn.Module, on_detach, on_hooks):
    """A clone of the ModelPatcher ``model`` whose diffusion model is ``module`` (ComfyUI's object patch: installed
    when ComfyUI loads the clone, restored when it unloads it), sized as ``module`` so that model management loads,
    offloads and frees it like any model. ``on_detach()`` runs whenever ComfyUI detaches the clone;
    ``on_hooks(hooks)`` when a sampler registers weight hooks (scheduled LoRAs) on it."""
    patched = model.clone()
    patched.add_object_patch("diffusion_model", module)
    own = diffusion_model(model)
    patched.size = max(int(model.model_size()) - tensor_bytes(own), 0) + tensor_bytes(module)
    if _pe is not None:
        patched.add_callback_with_key(_pe.CallbacksMP.ON_DETACH, "tunevideo", lambda _p, _all: on_detach())
        patched.add_callback_with_key(_pe.CallbacksMP.ON_REGISTER_ALL_HOOK_PATCHES, "tunevideo",
                                      lambda _p, hooks, *_a: on_hooks(hooks))
    return patched


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel."""
    if _mm is not None:
        _mm.throw_exception_if_processing_interrupted()


class Progress:
    """Progress bar + interrupt check, callable as the engine's ``callback(step, total, info)``."""

    def __init__(self, total: int, label: str = ""):
        self.total = total
        self.label = label
        self._bar = _cu.ProgressBar(total) if _cu is not None else None

    def __call__(self, step: int, total: int, info: dict | None = None) -> None:
        check_interrupt()
        if self._bar is not None:
            self._bar.update_absolute(step, total)
        if info and "loss" in info and (step % 25 == 0 or step == total):
            logger.info("%s step %d/%d loss %.4f", self.label, step, total, float(info["loss"]))


# ------------------------------------------------------------------------------------- CLIP models for evaluation
CLIP_SCORE_FOLDER = "clip_vision"  # ComfyUI's own folder for CLIP image models; full CLIPs live there too


def clip_model_roots() -> list[Path]:
    """The folders searched for scoring CLIPs: every registered ``clip_vision`` path (models/clip_vision, and
    extra_model_paths.yaml entries); ``$TUNEVIDEO_HOME/models/clip_vision`` without a host."""
    if _fp is None:
        return [_fallback_root() / "models" / CLIP_SCORE_FOLDER]
    return [Path(p) for p in _fp.get_folder_paths(CLIP_SCORE_FOLDER)]


def list_clip_models() -> list[str]:
    """Transformers CLIP folders (holding ``config.json``) and ``.safetensors`` files under the clip_vision
    folders, as paths relative to their root; files inside a listed folder are not listed again."""
    names: set[str] = set()
    for root in clip_model_roots():
        if not root.is_dir():
            continue
        for here, dirs, files in os.walk(root, followlinks=True):
            rel = Path(here).relative_to(root)
            if "config.json" in files and rel != Path("."):
                names.add(rel.as_posix())
                dirs[:] = []
                continue
            dirs.sort()
            names.update((rel / f).as_posix() for f in files if f.endswith(".safetensors"))
    return sorted(names)


def clip_model_path(name: str) -> Path:
    """Full path of an entry of :func:`list_clip_models`; FileNotFoundError naming it otherwise."""
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise FileNotFoundError(f"CLIP model {name!r} must be a name listed from models/{CLIP_SCORE_FOLDER}")
    for root in clip_model_roots():
        if (root / name).exists():
            return root / name
    raise FileNotFoundError(f"CLIP model {name!r} not found in models/{CLIP_SCORE_FOLDER}")


def comfy_tokenizer_dir() -> Path | None:
    """ComfyUI's own CLIP ViT-L/14 tokenizer files (``comfy/sd1_tokenizer``), None without a host."""
    if _cu is None:
        return None
    folder = Path(_cu.__file__).parent / "sd1_tokenizer"
    return folder if folder.is_dir() else None
