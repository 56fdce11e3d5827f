"""Write the shipped workflows (UI format + API-format twin) from one graph description per method.

    python tools/make_workflows.py          # rewrites workflows/*.json and workflows/api/*.json

Widget order for pack nodes comes from their INPUT_TYPES; core nodes' widget order is listed in CORE_WIDGETS
(ComfyUI 0.3.64). Seed widgets get the frontend's extra "control_after_generate" value in the UI format only.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# Core node id -> [(input name, type)] in widget order, and outputs [(name, type)].
CORE = {
    "CheckpointLoaderSimple": ([("ckpt_name", "COMBO")], [], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "CLIPTextEncode": ([("text", "STRING")], [("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")]),
    "VAEEncode": ([], [("pixels", "IMAGE"), ("vae", "VAE")], [("LATENT", "LATENT")]),
    "VAEDecode": ([], [("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")]),
    "SaveAnimatedWEBP": ([("filename_prefix", "STRING"), ("fps", "FLOAT"), ("lossless", "BOOLEAN"),
                          ("quality", "INT"), ("method", "COMBO")], [("images", "IMAGE")], []),
    "CreateVideo": ([("fps", "FLOAT")], [("images", "IMAGE")], [("VIDEO", "VIDEO")]),
    "SaveVideo": ([("filename_prefix", "STRING"), ("format", "COMBO"), ("codec", "COMBO")], [("video", "VIDEO")], []),
    "PreviewImage": ([], [("images", "IMAGE")], []),
    "LatentBatch": ([], [("samples1", "LATENT"), ("samples2", "LATENT")], [("LATENT", "LATENT")]),
    "EmptyLatentImage": ([("width", "INT"), ("height", "INT"), ("batch_size", "INT")], [], [("LATENT", "LATENT")]),
    "LoadImage": ([("image", "COMBO"), ("upload", "UPLOAD")], [], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "KSamplerSelect": ([("sampler_name", "COMBO")], [], [("SAMPLER", "SAMPLER")]),
    "SamplerCustom": ([("add_noise", "BOOLEAN"), ("noise_seed", "INT"), ("cfg", "FLOAT")],
                      [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                       ("sampler", "SAMPLER"), ("sigmas", "SIGMAS"), ("latent_image", "LATENT")],
                      [("output", "LATENT"), ("denoised_output", "LATENT")]),
    "ControlNetLoader": ([("control_net_name", "COMBO")], [], [("CONTROL_NET", "CONTROL_NET")]),
    "ControlNetApplyAdvanced": ([("strength", "FLOAT"), ("start_percent", "FLOAT"), ("end_percent", "FLOAT")],
                                [("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                                 ("control_net", "CONTROL_NET"), ("image", "IMAGE"), ("vae", "VAE")],
                                [("positive", "CONDITIONING"), ("negative", "CONDITIONING")]),
    "Canny": ([("low_threshold", "FLOAT"), ("high_threshold", "FLOAT")], [("image", "IMAGE")],
              [("IMAGE", "IMAGE")]),
}
SEED_NAMES = {"seed", "noise_seed"}
UPLOAD_KEYS = ("image_upload", "video_upload")  # the frontend adds an "upload" widget, serialised last as "image"


def pack_spec(node_id):
    from tunevideo import NODE_CLASS_MAPPINGS

    cls = NODE_CLASS_MAPPINGS[node_id]
    spec = cls.INPUT_TYPES()
    widgets, sockets = [], []
    for section in ("required", "optional"):
        for name, (kind, *opts) in spec.get(section, {}).items():
            if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                widgets.append((name, "COMBO" if isinstance(kind, list) else kind))
                if opts and any(opts[0].get(k) for k in UPLOAD_KEYS):
                    widgets.append(("upload", "UPLOAD"))
            else:
                sockets.append((name, kind))
    widgets.sort(key=lambda w: w[1] == "UPLOAD")  # the upload button comes after all other widgets
    return widgets, sockets, list(zip(cls.RETURN_NAMES, cls.RETURN_TYPES, strict=True))


def spec_of(node_id):
    return CORE[node_id] if node_id in CORE else pack_spec(node_id)


def tune_a_video_graph():
    """Node id -> (class, title, widget values by name, links by input name -> (node, output slot))."""
    return {
        1: ("CheckpointLoaderSimple", "Load SD1.5 checkpoint", {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}, {}),
        2: ("LoadVideoClip", "Source video (24 frames, stride 2, 512x512)",
            {"video": "man-skiing.mp4", "start_frame": 0, "frame_count": 24, "stride": 2, "width": 512,
             "height": 512}, {}),
        3: ("VAEEncode", None, {}, {"pixels": (2, 0), "vae": (1, 2)}),
        4: ("CLIPTextEncode", "Source prompt", {"text": "a man is skiing"}, {"clip": (1, 1)}),
        5: ("CLIPTextEncode", "Empty prompt (inversion + negative)", {"text": ""}, {"clip": (1, 1)}),
        6: ("CLIPTextEncode", "Edited prompt", {"text": "mickey mouse is skiing on the snow"}, {"clip": (1, 1)}),
        7: ("InflateUNetTemporal", None, {"attention": "tune-a-video", "temporal_layer": "tune-a-video",
                                          "fine_coarse_pool": 4}, {"model": (1, 0)}),
        8: ("OneShotTune", None,
            {"steps": 500, "learning_rate": 3e-5, "seed": 33, "trainable": "tune-a-video-reference",
             "custom_patterns": "attn1.to_q, attn2.to_q, attn_temp", "batch_size": 1,
             "gradient_checkpointing": True, "mixed_precision": "auto", "prompt_note": "a man is skiing",
             "force_memory": False},
            {"video_unet": (7, 0), "latent": (3, 0), "positive": (4, 0)}),
        9: ("DDIMInvertVideo", None, {"steps": 50}, {"video_unet": (8, 0), "latent": (3, 0), "conditioning": (5, 0)}),
        10: ("SampleVideo", None, {"steps": 50, "cfg": 12.5, "eta": 0.0, "seed": 33},
             {"video_unet": (8, 0), "positive": (6, 0), "negative": (5, 0), "latent": (9, 0)}),
        11: ("VAEDecode", None, {}, {"samples": (10, 0), "vae": (1, 2)}),
        12: ("SaveAnimatedWEBP", None, {"filename_prefix": "tunevideo/tune_a_video", "fps": 12.0, "lossless": False,
                                        "quality": 90, "method": "default"}, {"images": (11, 0), "fps": (2, 1)}),
        13: ("CreateVideo", None, {"fps": 12.0}, {"images": (11, 0), "fps": (2, 1)}),
        14: ("SaveVideo", None, {"filename_prefix": "tunevideo/tune_a_video", "format": "mp4", "codec": "h264"},
             {"video": (13, 0)}),
        15: ("SaveTunedVideoUNet", None, {"filename_prefix": "tune_a_video/man-skiing"}, {"video_unet": (8, 0)}),
        16: ("PreviewImage", "Tuning loss", {}, {"images": (8, 1)}),
    }


NOTE = ("Tune-A-Video (Wu et al., ICCV 2023). Put man-skiing.mp4 (or any clip) in ComfyUI/input and an SD1.5 "
        "checkpoint in models/checkpoints, edit the prompts, press Queue. Defaults are the paper's: 24 frames at "
        "512x512 with stride 2, 500 tuning steps at lr 3e-5, 50 DDIM inversion + 50 sampling steps, cfg 12.5. "
        "Tuning uses the 'tune-a-video-reference' preset: what the official code (which made the paper's results) "
        "actually trains, the mid and up blocks; 'tune-a-video' also trains the down blocks, as the paper describes. "
        "Prompts of any length work. The tuned weights are saved to models/tunevideo and can be reused with Load "
        "Tuned Video UNet.")

def video_p2p_graph():
    """Video-P2P with the defaults of its rabbit-jump configs (tune + p2p) and run_videop2p.py's constants."""
    from tunevideo.modules.defaults import VP2P

    return {
        1: ("CheckpointLoaderSimple", "Load SD1.5 checkpoint", {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}, {}),
        2: ("LoadVideoClip", "Source video (8 frames, stride 1, 512x512)",
            {"video": "rabbit-jump.mp4", "start_frame": 0, "frame_count": VP2P.n_sample_frames,
             "stride": VP2P.sample_frame_rate, "width": VP2P.width, "height": VP2P.height}, {}),
        3: ("VAEEncode", None, {}, {"pixels": (2, 0), "vae": (1, 2)}),
        4: ("CLIPTextEncode", "Source prompt (tuning)", {"text": VP2P.source_prompt}, {"clip": (1, 1)}),
        5: ("InflateUNetTemporal", "Inflate (Video-P2P attention)",
            {"attention": "video-p2p", "temporal_layer": "tune-a-video", "fine_coarse_pool": 4}, {"model": (1, 0)}),
        6: ("OneShotTune", None,
            {"steps": VP2P.max_train_steps, "learning_rate": VP2P.learning_rate, "seed": 33,
             "trainable": "tune-a-video-reference", "custom_patterns": "attn1.to_q, attn2.to_q, attn_temp",
             "batch_size": 1, "gradient_checkpointing": True, "mixed_precision": "auto",
             "prompt_note": VP2P.source_prompt, "force_memory": False},
            {"video_unet": (5, 0), "latent": (3, 0), "positive": (4, 0)}),
        7: ("NullTextInvertVideo", None, {"source_prompt": VP2P.source_prompt, "steps": VP2P.steps, "fast": False},
            {"video_unet": (6, 0), "latent": (3, 0), "clip": (1, 1)}),
        8: ("VideoP2PEdit", None,
            {"edit_prompt": VP2P.edit_prompt, "mode": "word swap" if VP2P.word_swap else "refine",
             "cross_replace_steps": VP2P.cross_replace_steps, "self_replace_steps": VP2P.self_replace_steps,
             "blend_words": VP2P.blend_words, "reweight": VP2P.reweight, "blend_threshold": VP2P.blend_threshold,
             "cfg": VP2P.guidance_scale},
            {"video_unet": (6, 0), "inverted": (7, 0), "clip": (1, 1)}),
        9: ("VAEDecode", "Decode edit", {}, {"samples": (8, 0), "vae": (1, 2)}),
        10: ("SaveAnimatedWEBP", None, {"filename_prefix": "tunevideo/video_p2p", "fps": 8.0, "lossless": False,
                                        "quality": 90, "method": "default"}, {"images": (9, 0), "fps": (2, 1)}),
        11: ("CreateVideo", None, {"fps": 8.0}, {"images": (9, 0), "fps": (2, 1)}),
        12: ("SaveVideo", None, {"filename_prefix": "tunevideo/video_p2p", "format": "mp4", "codec": "h264"},
             {"video": (11, 0)}),
        13: ("VAEDecode", "Decode source reconstruction", {}, {"samples": (8, 1), "vae": (1, 2)}),
        14: ("PreviewImage", "Source reconstruction (checks the inversion)", {}, {"images": (13, 0)}),
        15: ("PreviewImage", "Cross-attention of the blend / reweight words", {}, {"images": (8, 2)}),
        16: ("SaveTunedVideoUNet", None, {"filename_prefix": "video_p2p/rabbit-jump"}, {"video_unet": (6, 0)}),
        17: ("PreviewImage", "Tuning loss", {}, {"images": (6, 1)}),
    }


VP2P_NOTE = ("Video-P2P (Liu et al., 2023). Put a clip in ComfyUI/input and an SD1.5 checkpoint in "
             "models/checkpoints; describe the clip in both source prompts and write the edit. Defaults are the "
             "official rabbit-jump configs: 8 frames at 512x512, 500 tuning steps at lr 3e-5 with Video-P2P's "
             "first-frame attention, null-text inversion (50 steps, guidance 7.5), refine 'origami' with reweight 2 "
             "and local blend on 'rabbit', cross-attention replaced for 20% of the steps and temporal attention "
             "for 50%. Word swap needs prompts with the same number of words. The source reconstruction shows how "
             "well the inversion worked; the attention view shows where the blend and reweight words act.")

VP2P_POS = {1: (0, 0), 2: (0, 200), 3: (440, 560), 4: (440, 0), 5: (440, 260), 6: (880, 0), 7: (880, 420),
            8: (1320, 0), 9: (1760, 0), 10: (1760, 120), 11: (1760, 420), 12: (2180, 420), 13: (1760, 560),
            14: (2180, 560), 15: (1320, 520), 16: (880, 680), 17: (1320, 760)}

# Layout columns for the UI graph.
POS = {1: (0, 0), 2: (0, 200), 4: (440, 0), 5: (440, 220), 6: (440, 440), 3: (440, 660), 7: (880, 0),
       8: (880, 170), 9: (1320, 0), 10: (1320, 200), 11: (1760, 0), 12: (1760, 150), 13: (1760, 440),
       14: (2180, 440), 15: (1320, 500), 16: (1320, 640)}


def api_format(graph):
    prompt = {}
    for nid, (cls, title, values, links) in graph.items():
        inputs = dict(values)
        inputs.update({k: [str(src), slot] for k, (src, slot) in links.items()})
        entry = {"class_type": cls, "inputs": inputs}
        if title:
            entry["_meta"] = {"title": title}
        prompt[str(nid)] = entry
    return prompt


def ui_format(graph, note, pos=None):
    nodes, links, link_id = [], [], 0
    out_links = {}
    for nid, (cls, _, _, inputs) in graph.items():
        widgets, sockets, outs = spec_of(cls)
        for name, (src, slot) in inputs.items():
            link_id += 1
            src_cls = graph[src][0]
            ltype = spec_of(src_cls)[2][slot][1]
            links.append([link_id, src, slot, nid, name, ltype])
            out_links.setdefault((src, slot), []).append(link_id)
    link_by_target = {(lk[3], lk[4]): lk for lk in links}
    for order, (nid, (cls, title, values, _)) in enumerate(graph.items()):
        widgets, sockets, outs = spec_of(cls)
        ui_inputs = []
        for name, kind in sockets:
            lk = link_by_target.get((nid, name))
            ui_inputs.append({"name": name, "type": kind, "link": lk[0] if lk else None})
        for name, kind in widgets:
            lk = link_by_target.get((nid, name))
            if lk:  # a widget converted to an input socket
                ui_inputs.append({"name": name, "type": kind, "widget": {"name": name}, "link": lk[0]})
        for i, entry in enumerate(ui_inputs):
            lk = link_by_target.get((nid, entry["name"]))
            if lk:
                lk[4] = i  # UI links address input slots by index
        widgets_values = []
        for name, kind in widgets:
            if kind == "UPLOAD":
                widgets_values.append("image")
                continue
            widgets_values.append(values.get(name, 12.0 if name == "fps" else None))
            if name in SEED_NAMES:
                widgets_values.append("fixed")
        node = {"id": nid, "type": cls, "pos": list((pos or POS).get(nid, (0, 0))),
                "size": [380, 120 + 26 * len(widgets)],
                "flags": {}, "order": order, "mode": 0, "inputs": ui_inputs,
                "outputs": [{"name": n, "type": t, "links": out_links.get((nid, i), []), "slot_index": i}
                            for i, (n, t) in enumerate(outs)],
                "properties": {"Node name for S&R": cls}, "widgets_values": widgets_values}
        if title:
            node["title"] = title
        nodes.append(node)
    nodes.append({"id": 100, "type": "Note", "pos": [2180, 0], "size": [420, 220], "flags": {}, "order": len(nodes),
                  "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [note],
                  "title": "About this workflow"})
    return {"last_node_id": 100, "last_link_id": link_id, "nodes": nodes, "links": links, "groups": [],
            "config": {}, "extra": {"ds": {"scale": 0.6, "offset": [40, 40]}}, "version": 0.4}


def write(name, graph, note, pos=None):
    (ROOT / "workflows" / "api").mkdir(parents=True, exist_ok=True)
    (ROOT / "workflows" / f"{name}.json").write_text(json.dumps(ui_format(graph, note, pos), indent=1) + "\n")
    (ROOT / "workflows" / "api" / f"{name}.json").write_text(json.dumps(api_format(graph), indent=1) + "\n")


def _md_train(steps, frames_per_video, spatial_strength, note, links):
    return ("SpatialTemporalLoRATrain", None,
            {"frames_per_video": frames_per_video, "steps": steps, "rank": 32, "lr_spatial": 5e-4, "lr_temporal": 5e-4,
             "seed": 0, "paths": "spatial+temporal", "gradient_checkpointing": True, "mixed_precision": "auto",
             "output_spatial_strength": spatial_strength, "prompt_note": note, "force_memory": False}, links)


def _md_tail(first, sampler_links, prefix):
    """Sample -> decode -> save, node ids from ``first``."""
    a, b, c, d, e = range(first, first + 5)
    return {
        a: ("SampleVideo", None, {"steps": 30, "cfg": 12.0, "eta": 0.0, "seed": 0}, sampler_links),
        b: ("VAEDecode", None, {}, {"samples": (a, 0), "vae": (1, 2)}),
        c: ("SaveAnimatedWEBP", None, {"filename_prefix": f"tunevideo/{prefix}", "fps": 8.0, "lossless": False,
                                       "quality": 90, "method": "default"}, {"images": (b, 0)}),
        d: ("CreateVideo", None, {"fps": 8.0}, {"images": (b, 0)}),
        e: ("SaveVideo", None, {"filename_prefix": f"tunevideo/{prefix}", "format": "mp4", "codec": "h264"},
            {"video": (d, 0)}),
    }


def motion_director_graph():
    """MotionDirector on one video (configs/config_single_video.yaml + MotionDirector_inference.py), AnimateDiff."""
    prompt = "A person is skiing"
    graph = {
        1: ("CheckpointLoaderSimple", "Load SD1.5 checkpoint", {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}, {}),
        2: ("LoadVideoClip", "Reference video (16 frames, 384x384)",
            {"video": "man-skiing.mp4", "start_frame": 0, "frame_count": 16, "stride": 1, "width": 384,
             "height": 384}, {}),
        3: ("VAEEncode", None, {}, {"pixels": (2, 0), "vae": (1, 2)}),
        4: ("CLIPTextEncode", "Reference prompt", {"text": prompt}, {"clip": (1, 1)}),
        5: ("CLIPTextEncode", "Empty prompt (inversion + negative)", {"text": ""}, {"clip": (1, 1)}),
        6: ("CLIPTextEncode", "New prompt (same motion, new subject)", {"text": "A panda is skiing on the snow"},
            {"clip": (1, 1)}),
        7: ("AnimateDiffVideoUNet", None, {"motion_module": "mm_sd_v15_v2.ckpt"}, {"model": (1, 0)}),
        8: _md_train(150, 0, 0.0, prompt, {"video_unet": (7, 0), "latent": (3, 0), "positive": (4, 0)}),
        9: ("SaveVideoLoRA", "Save motion LoRA (animatediff_motion_lora)", {"filename_prefix": "motion_director/ski"},
            {"lora": (8, 1)}),
        10: ("SaveVideoLoRA", "Save spatial LoRA (loras)", {"filename_prefix": "motion_director/ski"},
             {"lora": (8, 2)}),
        11: ("PreviewImage", "Spatial loss", {}, {"images": (8, 3)}),
        12: ("PreviewImage", "Temporal loss", {}, {"images": (8, 4)}),
        13: ("DDIMInvertVideo", "Invert the reference (base model, empty prompt)", {"steps": 50},
             {"video_unet": (7, 0), "latent": (3, 0), "conditioning": (5, 0)}),
        14: ("MotionNoisePrior", None, {"noise_prior": 0.5, "seed": 0}, {"noise": (13, 0)}),
    }
    graph.update(_md_tail(15, {"video_unet": (8, 0), "positive": (6, 0), "negative": (5, 0), "latent": (14, 0)},
                          "motion_director"))
    return graph


MD_NOTE = ("MotionDirector (Zhao et al., 2023) on AnimateDiff. Put an SD1.5 checkpoint in models/checkpoints, an "
           "AnimateDiff SD1.5 motion module (e.g. mm_sd_v15_v2.ckpt) in models/animatediff_models and the reference "
           "clip in ComfyUI/input. Training learns the clip's motion as a temporal LoRA while a spatial LoRA absorbs "
           "its look (defaults of config_single_video.yaml: 16 frames at 384x384, 150 steps, rank 32, lr 5e-4). The "
           "edit samples the new prompt with the motion only (spatial strength 0), starting from the inverted "
           "reference mixed with fresh noise (noise prior 0.5), 30 DDIM steps, cfg 12 (MotionDirector_inference.py). "
           "The motion LoRA is saved to models/animatediff_motion_lora, where AnimateDiff-Evolved's Load AnimateDiff "
           "LoRA finds it; the spatial LoRA to models/loras (core Load LoRA).")

MD_POS = {1: (0, 0), 2: (0, 200), 4: (440, 0), 5: (440, 200), 6: (440, 400), 3: (440, 650), 7: (440, 770),
          8: (880, 0), 13: (880, 560), 15: (1320, 0), 14: (1320, 300), 9: (1320, 560), 10: (1320, 690),
          11: (1320, 820), 16: (1760, 0), 17: (1760, 120), 18: (1760, 440), 12: (1760, 820), 19: (2180, 440)}


def motion_director_multi_graph():
    """MotionDirector on several videos of one motion (configs/config_multi_videos.yaml), AnimateDiff."""
    prompt = "A person is riding a bicycle"
    graph = {
        1: ("CheckpointLoaderSimple", "Load SD1.5 checkpoint", {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}, {}),
        2: ("LoadVideoClip", "Reference video 1 (16 frames, 384x384)",
            {"video": "cycling-1.mp4", "start_frame": 0, "frame_count": 16, "stride": 4, "width": 384,
             "height": 384}, {}),
        3: ("LoadVideoClip", "Reference video 2 (16 frames, 384x384)",
            {"video": "cycling-2.mp4", "start_frame": 0, "frame_count": 16, "stride": 4, "width": 384,
             "height": 384}, {}),
        4: ("VAEEncode", None, {}, {"pixels": (2, 0), "vae": (1, 2)}),
        5: ("VAEEncode", None, {}, {"pixels": (3, 0), "vae": (1, 2)}),
        6: ("LatentBatch", "Videos one after the other", {}, {"samples1": (4, 0), "samples2": (5, 0)}),
        7: ("CLIPTextEncode", "Prompt of the reference videos", {"text": prompt}, {"clip": (1, 1)}),
        8: ("CLIPTextEncode", "Negative prompt", {"text": ""}, {"clip": (1, 1)}),
        9: ("CLIPTextEncode", "New prompt", {"text": "An astronaut is riding a bicycle on the moon"},
            {"clip": (1, 1)}),
        10: ("AnimateDiffVideoUNet", None, {"motion_module": "mm_sd_v15_v2.ckpt"}, {"model": (1, 0)}),
        11: _md_train(3000, 16, 0.0, prompt, {"video_unet": (10, 0), "latent": (6, 0), "positive": (7, 0)}),
        12: ("SaveVideoLoRA", "Save motion LoRA (animatediff_motion_lora)",
             {"filename_prefix": "motion_director/cycling"}, {"lora": (11, 1)}),
        13: ("SaveVideoLoRA", "Save spatial LoRAs (loras, one per video)",
             {"filename_prefix": "motion_director/cycling"}, {"lora": (11, 2)}),
        14: ("PreviewImage", "Temporal loss", {}, {"images": (11, 4)}),
        15: ("EmptyLatentImage", "Fresh noise: 16 frames at 384x384", {"width": 384, "height": 384,
                                                                       "batch_size": 16}, {}),
    }
    graph.update(_md_tail(16, {"video_unet": (11, 0), "positive": (9, 0), "negative": (8, 0), "latent": (15, 0)},
                          "motion_director_multi"))
    return graph


MD_MULTI_NOTE = ("MotionDirector on several reference videos of one motion (config_multi_videos.yaml: 16 frames at "
                 "384x384, 3000 steps, rank 32, lr 5e-4, weight decay 1e-4, one spatial LoRA per video). Every video "
                 "must give the same frame count (frames_per_video); add more with further Latent Batch nodes. The "
                 "edit samples the new prompt from fresh noise (noise prior 0, as the multi-video config), motion "
                 "LoRA only, 30 DDIM steps at cfg 12.")

MD_MULTI_POS = {1: (0, 0), 2: (0, 200), 3: (0, 560), 7: (440, 0), 8: (440, 200), 9: (440, 400), 4: (440, 650),
                5: (440, 760), 6: (440, 870), 10: (440, 990), 11: (880, 0), 15: (880, 560), 16: (1320, 0),
                12: (1320, 400), 13: (1320, 520), 14: (1320, 660), 17: (1760, 0), 18: (1760, 120), 19: (1760, 440),
                20: (2180, 440)}

WORKFLOWS = {"tune_a_video": (tune_a_video_graph, NOTE, POS), "video_p2p": (video_p2p_graph, VP2P_NOTE, VP2P_POS),
             "motion_director": (motion_director_graph, MD_NOTE, MD_POS),
             "motion_director_multi": (motion_director_multi_graph, MD_MULTI_NOTE, MD_MULTI_POS)}


def evaluate_graph():
    """CLIP evaluation of an edit (Tune-A-Video Sec. 5): the edited video, its source as it was edited, one CLIP."""
    return {
        1: ("LoadVideoClip", "Edited video (copy the saved edit into ComfyUI/input)",
            {"video": "tune_a_video_00001_.mp4", "start_frame": 0, "frame_count": 24, "stride": 1, "width": 512,
             "height": 512}, {}),
        2: ("LoadVideoClip", "Source video, as it was edited (24 frames, stride 2)",
            {"video": "man-skiing.mp4", "start_frame": 0, "frame_count": 24, "stride": 2, "width": 512,
             "height": 512}, {}),
        3: ("LoadCLIPScoreModel", "CLIP ViT-L/14 (models/clip_vision)", {"model": "clip-vit-large-patch14"}, {}),
        4: ("CLIPVideoScore", None, {"prompt": "mickey mouse is skiing on the snow"},
            {"frames": (1, 0), "clip_model": (3, 0), "source_frames": (2, 0)}),
        5: ("PreviewImage", "Per-frame CLIP score and frame-to-frame similarity", {}, {"images": (4, 3)}),
    }


EVAL_NOTE = ("CLIP metrics as the papers report them (Tune-A-Video Sec. 5): frame consistency (mean CLIP image "
             "cosine over all pairs of frames), text alignment (mean CLIP score, 100 x cosine, of every frame with "
             "the edited prompt) and source similarity (each edited frame vs its source frame). Put the transformers "
             "folder of openai/clip-vit-large-patch14 (config.json, model.safetensors, vocab.json, merges.txt) in "
             "models/clip_vision/, copy your edited video into ComfyUI/input, load the source with the settings it "
             "was edited with, and type the edited prompt. The numbers show on the node (and its FLOAT outputs); "
             "the chart shows where the video drifts. A core Load CLIP Vision can feed clip_vision instead for the "
             "image-only metrics. Headless, over many edits: python -m tunevideo evaluate (README).")

EVAL_POS = {1: (0, 0), 2: (0, 600), 3: (440, 360), 4: (440, 0), 5: (880, 0)}  # video loaders show a preview
WORKFLOWS["evaluate"] = (evaluate_graph, EVAL_NOTE, EVAL_POS)


def _dreamix_tail(clip_node, latent_node, frames_node, edit_text, prefix, fps_link):
    """Inflate -> Dreamix Finetune -> corrupt + encode -> corrupted sample -> decode/save (node ids 5..16)."""
    from tunevideo.modules.defaults import DREAMIX as D

    save = {"filename_prefix": f"tunevideo/{prefix}", "fps": 8.0, "lossless": False, "quality": 90,
            "method": "default"}
    return {
        5: ("CLIPTextEncode", "Edit prompt", {"text": edit_text}, {"clip": (1, 1)}),
        6: ("CLIPTextEncode", "Negative prompt", {"text": ""}, {"clip": (1, 1)}),
        7: ("InflateUNetTemporal", None, {"attention": "tune-a-video", "temporal_layer": "tune-a-video",
                                          "fine_coarse_pool": 4}, {"model": (1, 0)}),
        8: ("DreamixFinetune", None,
            {"steps": D.max_train_steps, "learning_rate": D.learning_rate, "seed": 33, "image_ratio": D.image_ratio,
             "trainable": D.workflow_trainable, "custom_patterns": "attn1, attn2, attn_temp",
             "lora_rank": D.lora_rank, "gradient_checkpointing": True, "mixed_precision": "auto", "prompt_note": "",
             "optimizer": "adamw", "force_memory": False},
            {"video_unet": (7, 0), "latent": (latent_node, 0), "positive": (clip_node, 0)}),
        9: ("DreamixCorruptVideo", None, {"spatial_downsample": D.spatial_downsample,
                                          "temporal_downsample": D.temporal_downsample}, {"images": (frames_node, 0)}),
        10: ("VAEEncode", "Encode degraded video", {}, {"pixels": (9, 0), "vae": (1, 2)}),
        11: ("DreamixCorruptedSample", None,
             {"noise_strength": D.noise_strength, "steps": D.num_inference_steps, "cfg": D.guidance_scale,
              "seed": 33}, {"video_unet": (8, 0), "positive": (5, 0), "negative": (6, 0), "latent": (10, 0)}),
        12: ("VAEDecode", None, {}, {"samples": (11, 0), "vae": (1, 2)}),
        13: ("SaveAnimatedWEBP", None, save, {"images": (12, 0), **fps_link}),
        14: ("PreviewImage", "Finetuning loss", {}, {"images": (8, 1)}),
        15: ("SaveTunedVideoUNet", None, {"filename_prefix": f"dreamix/{prefix}"}, {"video_unet": (8, 0)}),
    }


def dreamix_graph():
    """Dreamix video editing (Sec. 3): mixed finetuning on the clip, then sampling from its degraded version."""
    from tunevideo.modules.defaults import DREAMIX as D

    return {
        1: ("CheckpointLoaderSimple", "Load SD1.5 checkpoint", {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}, {}),
        2: ("LoadVideoClip", "Source video (8 frames, stride 2, 512x512)",
            {"video": "car-turn.mp4", "start_frame": 0, "frame_count": D.n_sample_frames, "stride": 2,
             "width": 512, "height": 512}, {}),
        3: ("VAEEncode", None, {}, {"pixels": (2, 0), "vae": (1, 2)}),
        4: ("CLIPTextEncode", "Prompt describing the clip", {"text": "a jeep car is moving on the road"},
            {"clip": (1, 1)}),
        **_dreamix_tail(4, 3, 2, "a jeep car is moving on the snow", "dreamix", {"fps": (2, 1)}),
    }


def dreamix_image_to_video_graph():
    """Dreamix image animation (Sec. 4.2): one image -> coarse video by camera motion -> the same edit."""
    from tunevideo.modules.defaults import DREAMIX as D

    return {
        1: ("CheckpointLoaderSimple", "Load SD1.5 checkpoint", {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}, {}),
        2: ("LoadImage", "Image to animate (512x512)", {"image": "example.png"}, {}),
        16: ("ImageToCoarseVideo", None, {"frames": D.n_sample_frames, "camera_motion": "zoom-in",
                                          "motion_amount": 0.25}, {"image": (2, 0)}),
        3: ("VAEEncode", None, {}, {"pixels": (16, 0), "vae": (1, 2)}),
        4: ("CLIPTextEncode", "Prompt describing the image", {"text": "a photo of a mountain lake"},
            {"clip": (1, 1)}),
        **_dreamix_tail(4, 3, 16, "a mountain lake, waves rippling, clouds moving", "dreamix_image_to_video", {}),
    }


def ei2_graph():
    """EI²: the Tune-A-Video pipeline with STAM temporal layers and FFAM self-attention (8 frames)."""
    from tunevideo.modules.defaults import EI2

    graph = tune_a_video_graph()
    clip = dict(graph[2][2], frame_count=EI2.n_sample_frames)
    graph[2] = ("LoadVideoClip", "Source video (8 frames, stride 2, 512x512)", clip, {})
    graph[7] = ("InflateUNetTemporal", "Inflate (EI²: FFAM + STAM)",
                {"attention": EI2.attention, "temporal_layer": EI2.temporal_layer,
                 "fine_coarse_pool": EI2.ffam_pool_size}, {"model": (1, 0)})
    graph[8] = (graph[8][0], None, dict(graph[8][2], trainable="tune-a-video"), graph[8][3])
    for nid, prefix in ((12, "tunevideo/ei2"), (14, "tunevideo/ei2"), (15, "ei2/man-skiing")):
        graph[nid] = (graph[nid][0], graph[nid][1], dict(graph[nid][2], filename_prefix=prefix), graph[nid][3])
    return graph


DREAMIX_NOTE = ("Dreamix (Molad et al., 2023) on an inflated SD1.5 UNet. Put a clip in ComfyUI/input and an SD1.5 "
                "checkpoint in models/checkpoints. The model is finetuned on the clip as a video and on its frames "
                "as independent images (image_ratio of the steps, temporal layers off), then the clip is degraded "
                "(downsampled x4), encoded, noised to strength s and denoised with the edit prompt. Finetuning "
                "trains every attention projection (dreamix-attention, about 5 GiB at 8 frames 512x512); the paper's "
                "whole-model preset dreamix-full needs about 15 GiB with AdamW, 10 GiB with adafactor. Higher "
                "strength changes more (motion included), lower keeps more of the source. The paper used "
                "Imagen-Video and gives few numbers: steps, learning rate, ratio and strength are our defaults "
                "(README).")
I2V_NOTE = ("Dreamix image-to-video (Sec. 4.2): the image becomes a coarse video (replication + zoom/pan/"
            "perspective), the model is finetuned on it (video + frames), and the degraded coarse video is "
            "re-synthesised with the animation prompt. Subject-driven generation: Stack Subject Images -> VAE Encode "
            "-> Dreamix Finetune with image_ratio 1, then Sample Video from an empty latent.")
EI2_NOTE = ("EI² (Zhang et al., NeurIPS 2023): Tune-A-Video with shift-restricted temporal attention (STAM: Instance "
            "Centering instead of LayerNorm, normalised attention mapping) and fine-coarse frame attention (FFAM: "
            "each patch sees its own frame and 4x4-pooled patches of every other frame). 8 frames at 512x512, 500 "
            "tuning steps at lr 3e-5 (Tune-A-Video's schedule), 50 DDIM inversion + 50 sampling steps, cfg 12.5. "
            "The pooling size must divide the latent at every level (4 fits 512x512).")
DREAMIX_POS = {1: (0, 0), 2: (0, 200), 16: (0, 520), 3: (440, 640), 4: (440, 0), 5: (440, 220), 6: (440, 440),
               7: (880, 0), 8: (880, 170), 9: (880, 640), 10: (1320, 560), 11: (1320, 0), 12: (1760, 0),
               13: (1760, 150), 14: (1320, 700), 15: (1760, 440)}
WORKFLOWS_DREAMIX_EI2 = {"dreamix": (dreamix_graph, DREAMIX_NOTE, DREAMIX_POS),
                         "dreamix_image_to_video": (dreamix_image_to_video_graph, I2V_NOTE, DREAMIX_POS),
                         "ei2": (ei2_graph, EI2_NOTE, POS)}



WORKFLOWS.update(WORKFLOWS_DREAMIX_EI2)


def _core_sampling_graph(sampler, spacing, end, steps, prefix, control=False):
    """Tune-A-Video's tuning and inversion (node ids 1-9, as tune_a_video), then the tuned VIDEO_UNET as a MODEL in
    core's SamplerCustom from the inverted noise; with ``control``, Canny edges of the source frames through a
    ControlNet on the edited prompt."""
    graph = {k: v for k, v in tune_a_video_graph().items() if k <= 9}
    graph[16] = ("PreviewImage", "Tuning loss", {}, {"images": (8, 1)})
    cond = {"positive": (6, 0), "negative": (5, 0)}
    if control:
        graph[20] = ("ControlNetLoader", "SD1.5 ControlNet (canny)",
                     {"control_net_name": "control_v11p_sd15_canny.safetensors"}, {})
        graph[21] = ("Canny", "Edges of the source frames", {"low_threshold": 0.4, "high_threshold": 0.8},
                     {"image": (2, 0)})
        graph[22] = ("ControlNetApplyAdvanced", None, {"strength": 0.8, "start_percent": 0.0, "end_percent": 1.0},
                     {**cond, "control_net": (20, 0), "image": (21, 0)})
        cond = {"positive": (22, 0), "negative": (22, 1)}
    graph.update({
        10: ("VideoUNetAsModel", None, {"frames_per_video": 0}, {"model": (1, 0), "video_unet": (8, 0)}),
        11: ("InvertedNoiseSigmas", None, {"spacing": spacing, "end": end, "steps": steps},
             {"model": (10, 0), "noise": (9, 0)}),
        12: ("KSamplerSelect", None, {"sampler_name": sampler}, {}),
        13: ("SamplerCustom", None, {"add_noise": False, "noise_seed": 33, "cfg": 12.5},
             {"model": (10, 0), **cond, "sampler": (12, 0), "sigmas": (11, 0), "latent_image": (11, 1)}),
        14: ("VAEDecode", None, {}, {"samples": (13, 0), "vae": (1, 2)}),
        15: ("SaveAnimatedWEBP", None, {"filename_prefix": f"tunevideo/{prefix}", "fps": 12.0, "lossless": False,
                                        "quality": 90, "method": "default"}, {"images": (14, 0), "fps": (2, 1)}),
        17: ("CreateVideo", None, {"fps": 12.0}, {"images": (14, 0), "fps": (2, 1)}),
        18: ("SaveVideo", None, {"filename_prefix": f"tunevideo/{prefix}", "format": "mp4", "codec": "h264"},
             {"video": (17, 0)}),
    })
    return graph


def tune_a_video_ksampler_graph():
    return _core_sampling_graph("dpmpp_2m", "karras", "zero", 25, "tune_a_video_ksampler")


def tune_a_video_controlnet_graph():
    return _core_sampling_graph("euler", "ddim", "alpha_0", 0, "tune_a_video_controlnet", control=True)


KSAMPLER_NOTE = ("Tune-A-Video's tuning and DDIM inversion, then ComfyUI's own sampler: Video UNet As Model turns the "
                 "tuned VIDEO_UNET into a MODEL (core batches cond and uncond; each video is denoised as one clip), "
                 "Inverted Noise Sigmas starts SamplerCustom (add_noise off) from the inverted noise, here DPM++ 2M "
                 "with Karras spacing over 25 steps. Any sampler works; spacing 'ddim' + end 'alpha_0' with the ddim "
                 "or euler sampler reproduces Sample Video exactly.")
CONTROLNET_NOTE = ("Tune-A-Video with a ControlNet: Canny edges of the source frames hold the structure while the "
                   "tuned VIDEO_UNET, as a MODEL in SamplerCustom, samples the edited prompt from the inverted noise "
                   "(euler on the inversion's 50 timesteps = DDIM). Put an SD1.5 canny ControlNet (e.g. "
                   "control_v11p_sd15_canny) in models/controlnet. The ControlNet runs per frame; its residuals are "
                   "added where the 2D UNet adds them. T2I-Adapters are not supported (a clear error says so).")
CORE_POS = {1: (0, 0), 2: (0, 200), 4: (440, 0), 5: (440, 220), 6: (440, 440), 3: (440, 660), 7: (880, 0),
            8: (880, 170), 9: (1320, 0), 16: (1320, 640), 10: (1320, 200), 11: (1320, 380), 12: (1760, 0),
            20: (880, 560), 21: (880, 700), 22: (1320, 820), 13: (1760, 150), 14: (1760, 480), 15: (2180, 260),
            17: (2180, 600), 18: (2180, 720)}
WORKFLOWS["tune_a_video_ksampler"] = (tune_a_video_ksampler_graph, KSAMPLER_NOTE, CORE_POS)
WORKFLOWS["tune_a_video_controlnet"] = (tune_a_video_controlnet_graph, CONTROLNET_NOTE, CORE_POS)



def tune_a_video_long_graph():
    """Tune-A-Video on a long clip (80 frames) through context windows of 16 frames: each tuning step trains on one
    window, inversion and sampling run window by window at every step and fuse the overlaps."""
    graph = tune_a_video_graph()
    graph[2] = ("LoadVideoClip", "Source video (80 frames, stride 2, 512x512)",
                {"video": "man-skiing.mp4", "start_frame": 0, "frame_count": 80, "stride": 2, "width": 512,
                 "height": 512}, {})
    graph[17] = ("VideoContextWindows", "Context windows (16 frames, overlap 4)",
                 {"context_length": 16, "context_overlap": 4, "fuse_method": "pyramid", "closed_loop": False}, {})
    for nid in (8, 9, 10):
        cls, title, values, links = graph[nid]
        graph[nid] = (cls, title, values, {**links, "context": (17, 0)})
    for nid, prefix in ((12, "tunevideo/tune_a_video_long"), (14, "tunevideo/tune_a_video_long"),
                        (15, "tune_a_video/man-skiing-long")):
        cls, title, values, links = graph[nid]
        graph[nid] = (cls, title, {**values, "filename_prefix": prefix}, links)
    return graph


LONG_NOTE = ("Tune-A-Video on a long clip: 80 frames (stride 2, 512x512) through Video Context Windows of 16 frames "
             "overlapping by 4 (7 windows). One-Shot Tune trains each step on one window (a seeded cycle covers every "
             "frame), so its memory is a 16-frame run's; DDIM inversion and sampling run window by window at every "
             "step and fuse the overlaps (pyramid weights); sparse-causal attention in every window reads frame 0 of "
             "the whole clip, so appearance does not drift between windows. Same paper defaults otherwise (500 "
             "steps, 50 + 50 DDIM steps, cfg 12.5). The progress bar moves per window; Cancel stops between windows.")
LONG_POS = {**POS, 17: (880, 700)}
WORKFLOWS["tune_a_video_long"] = (tune_a_video_long_graph, LONG_NOTE, LONG_POS)


if __name__ == "__main__":
    for wf_name, (make, text, layout) in WORKFLOWS.items():
        write(wf_name, make(), text, layout)
