"""Bytes on disk, the bottom layer: atomic writes, the one safetensors reader, video IO, plots."""

#: Suffixes of pickled torch files. Pickles can run code: they are refused, or read only as plain tensors
#: (``torch.load(weights_only=True)``) where a format exists only as pickles (AnimateDiff's motion modules).
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
