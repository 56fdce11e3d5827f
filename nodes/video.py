"""LoadVideoClip: read a clip the way Tune-A-Video samples its training video."""

from __future__ import annotations

from ..modules.defaults import TAV
from ..modules.files.video_io import read_video
from . import host
from .boundary import check_declared_ranges

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif", ".webp")


class LoadVideoClip:
    """Frames start, start+stride, ... of a video in ComfyUI's input folder, resized and centre-cropped."""

    CATEGORY = "TuneVideo/video"
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE", "FLOAT")
    RETURN_NAMES = ("frames", "fps")
    OUTPUT_TOOLTIPS = ("Frames [F,H,W,C] in 0..1.", "Frame rate of the returned frames (source fps / stride).")
    DESCRIPTION = ("Tune-A-Video's data sampling (sample_start_idx, n_sample_frames, sample_frame_rate) with "
                   "resize + centre crop to multiples of 8. Decoding stops after the last needed frame; frames are "
                   "decoded one by one into one output buffer, so long clips cost one copy of the result.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video": (host.list_inputs(VIDEO_EXTENSIONS), {"video_upload": True,
                                                           "tooltip": "Video file in ComfyUI's input folder."}),
            "start_frame": ("INT", {"default": TAV.sample_start_idx, "min": 0, "max": 1_000_000,
                                    "tooltip": "First source frame (0-based)."}),
            "frame_count": ("INT", {"default": TAV.n_sample_frames, "min": 1, "max": 1024,
                                    "tooltip": "Frames to return (Tune-A-Video: 24)."}),
            "stride": ("INT", {"default": TAV.sample_frame_rate, "min": 1, "max": 120,
                               "tooltip": "Take every n-th source frame (Tune-A-Video sample_frame_rate: 2)."}),
            "width": ("INT", {"default": TAV.width, "min": 8, "max": 4096, "step": 8,
                              "tooltip": "Output width, a multiple of 8 (resize to cover, then centre-crop)."}),
            "height": ("INT", {"default": TAV.height, "min": 8, "max": 4096, "step": 8,
                               "tooltip": "Output height, a multiple of 8."}),
        }}

    def load(self, video, start_frame, frame_count, stride, width, height):
        check_declared_ranges(self.INPUT_TYPES(), start_frame=start_frame, frame_count=frame_count, stride=stride,
                              width=width, height=height)
        frames, fps = read_video(host.input_path(video), start=start_frame, count=frame_count, stride=stride,
                                 width=width, height=height, callback=host.Progress(frame_count, "LoadVideoClip"))
        return (frames, float(fps))

    @classmethod
    def IS_CHANGED(cls, video, **_):
        path = host.input_path(video)
        stat = path.stat()
        return f"{path}:{stat.st_mtime_ns}:{stat.st_size}"

    @classmethod
    def VALIDATE_INPUTS(cls, video):
        """Checks ``video`` only: ComfyUI skips its own checks of every input named here (all of them with
        ``**kwargs``), so the numbers keep ComfyUI's min/max validation."""
        try:
            host.input_path(video)
        except (FileNotFoundError, ValueError) as e:
            return str(e)
        return True
