"""ComfyUI node faces of the TuneVideo engine."""

from . import host
from .animatediff import AnimateDiffVideoUNet
from .boundary import check_float_inputs
from .core_model import InvertedNoiseSigmas, VideoUNetAsModel
from .dreamix import (
    DreamixCorruptedSample,
    DreamixCorruptVideo,
    DreamixFinetune,
    ImageToCoarseVideo,
    StackSubjectImages,
)
from .evaluate import CLIPVideoScore, LoadCLIPScoreModel
from .inflate import InflateUNetTemporal
from .motion_director import (
    ApplyVideoLoRA,
    LoadVideoLoRA,
    MotionNoisePrior,
    SaveVideoLoRA,
    SpatialTemporalLoRATrain,
)
from .sampling import DDIMInvertVideo, SampleVideo
from .tune import OneShotTune
from .tuned_files import LoadTunedVideoUNet, SaveTunedVideoUNet
from .video import LoadVideoClip
from .video_p2p import NullTextInvertVideo, VideoP2PEdit
from .windows import VideoContextWindows

host.register_model_folder()

NODE_CLASS_MAPPINGS = {
    "InflateUNetTemporal": InflateUNetTemporal,
    "OneShotTune": OneShotTune,
    "DDIMInvertVideo": DDIMInvertVideo,
    "SampleVideo": SampleVideo,
    "SaveTunedVideoUNet": SaveTunedVideoUNet,
    "LoadTunedVideoUNet": LoadTunedVideoUNet,
    "LoadVideoClip": LoadVideoClip,
    "NullTextInvertVideo": NullTextInvertVideo,
    "VideoP2PEdit": VideoP2PEdit,
    "AnimateDiffVideoUNet": AnimateDiffVideoUNet,
    "SpatialTemporalLoRATrain": SpatialTemporalLoRATrain,
    "SaveVideoLoRA": SaveVideoLoRA,
    "LoadVideoLoRA": LoadVideoLoRA,
    "ApplyVideoLoRA": ApplyVideoLoRA,
    "MotionNoisePrior": MotionNoisePrior,
    "LoadCLIPScoreModel": LoadCLIPScoreModel,
    "CLIPVideoScore": CLIPVideoScore,
    "DreamixFinetune": DreamixFinetune,
    "DreamixCorruptVideo": DreamixCorruptVideo,
    "DreamixCorruptedSample": DreamixCorruptedSample,
    "ImageToCoarseVideo": ImageToCoarseVideo,
    "StackSubjectImages": StackSubjectImages,
    "VideoUNetAsModel": VideoUNetAsModel,
    "InvertedNoiseSigmas": InvertedNoiseSigmas,
    "VideoContextWindows": VideoContextWindows,
}

for _cls in NODE_CLASS_MAPPINGS.values():
    check_float_inputs(_cls)

NODE_DISPLAY_NAME_MAPPINGS = {
    "InflateUNetTemporal": "Inflate UNet (Temporal)",
    "OneShotTune": "One-Shot Tune (Tune-A-Video)",
    "DDIMInvertVideo": "DDIM Invert Video",
    "SampleVideo": "Sample Video (DDIM)",
    "SaveTunedVideoUNet": "Save Tuned Video UNet",
    "LoadTunedVideoUNet": "Load Tuned Video UNet",
    "LoadVideoClip": "Load Video Clip (TuneVideo)",
    "NullTextInvertVideo": "Null-Text Invert Video (Video-P2P)",
    "VideoP2PEdit": "Video-P2P Edit",
    "AnimateDiffVideoUNet": "AnimateDiff Video UNet (motion module)",
    "SpatialTemporalLoRATrain": "Spatial-Temporal LoRA Train (MotionDirector)",
    "SaveVideoLoRA": "Save Video LoRA (motion / spatial)",
    "LoadVideoLoRA": "Load Video LoRA (motion / spatial)",
    "ApplyVideoLoRA": "Apply Video LoRA",
    "MotionNoisePrior": "Motion Noise Prior (MotionDirector)",
    "LoadCLIPScoreModel": "Load CLIP Score Model (TuneVideo)",
    "CLIPVideoScore": "CLIP Video Score (frame consistency, text alignment)",
    "DreamixFinetune": "Dreamix Finetune (mixed video/frames)",
    "DreamixCorruptVideo": "Dreamix Corrupt Video",
    "DreamixCorruptedSample": "Dreamix Corrupted Sample",
    "ImageToCoarseVideo": "Image To Coarse Video (Dreamix)",
    "StackSubjectImages": "Stack Subject Images (Dreamix)",
    "VideoUNetAsModel": "Video UNet As Model (core samplers, ControlNet)",
    "InvertedNoiseSigmas": "Inverted Noise Sigmas (start a core sampler)",
    "VideoContextWindows": "Video Context Windows (long clips)",
}
