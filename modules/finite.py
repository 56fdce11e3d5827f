"""One check for non-finite numbers: node inputs, numbers parsed from text, tensors about to be saved, training.

A NaN or infinity never fails loudly on its own: it flows through sampling into an all-NaN video, or through an
optimiser step into weights that are then saved. Every boundary calls one of these instead of its own test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch


class NonFiniteError(ValueError):
    """A number or tensor is NaN or infinite where a finite value is needed."""


def finite_number(value, name: str, low: float | None = None, high: float | None = None) -> float:
    """``value`` (a number or the text of one) as a finite float in ``[low, high]``; ValueError naming ``name``."""
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be a number")
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}={value!r} is not a number") from e
    if not math.isfinite(number):
        raise NonFiniteError(f"{name}={value!r} must be a finite number (NaN and infinity are refused)")
    if low is not None and number < low or high is not None and number > high:
        raise ValueError(f"{name}={value!r} must be between {low} and {high}")
    return number


def check_finite_tensors(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise NonFiniteError when any floating tensor of ``tensors`` holds NaN or infinity (``what``: e.g. the file
    about to be written). One host sync for the whole mapping."""
    floats = [(k, t) for k, t in tensors.items() if torch.is_tensor(t) and t.is_floating_point() and t.numel()]
    if not floats:
        return
    bad = torch.stack([(~torch.isfinite(t.detach())).sum().to("cpu") for _, t in floats])
    if int(bad.sum()) == 0:
        return
    names = [k for (k, _), n in zip(floats, bad.tolist(), strict=True) if n]
    raise NonFiniteError(f"{what}: {int(bad.sum()):,} NaN/infinite values in {len(names)} of {len(floats)} tensors "
                         f"(e.g. {names[0]}); nothing was written. The training that made them diverged: train "
                         f"again with a lower learning rate, or in fp32/bf16 instead of fp16")


#: How often the training loops look at the loss and the parameters (one host sync each time, as the progress log).
CHECK_EVERY = 25


class FiniteWatch:
    """Watches a training loop for divergence without a host sync per step: :meth:`loss` records the first
    non-finite loss on the device; :meth:`check` (every :data:`CHECK_EVERY` steps and at the last, one sync, as the
    progress log) raises NonFiniteError naming the step, the precision and what to try, also when a trained
    parameter became NaN/infinite."""

    def __init__(self, total: int, params: Sequence[torch.Tensor], precision: str, what: str,
                 device: torch.device | str):
        self.total, self.params, self.precision, self.what = total, list(params), precision, what
        self._first = torch.zeros((), dtype=torch.long, device=device)
        self._value = torch.zeros((), device=device)

    def loss(self, step: int, loss: torch.Tensor) -> None:
        """Record ``loss`` of 1-based ``step`` (device-side only)."""
        value = loss.detach().float().reshape(()).to(self._value.device)
        new = (self._first == 0) & ~torch.isfinite(value)
        self._first = torch.where(new, torch.full_like(self._first, step), self._first)
        self._value = torch.where(new, value, self._value)

    def check(self, step: int) -> None:
        if step % CHECK_EVERY and step != self.total:
            return
        bad_params = [~torch.isfinite(p.detach()).all() for p in self.params]
        flags = torch.stack([self._first > 0] + [b.to(self._first.device) for b in bad_params]).cpu()
        if not bool(flags.any()):
            return
        if bool(flags[0]):
            where = f"the loss became {float(self._value)} at step {int(self._first)}/{self.total}"
        else:
            where = f"a trained parameter became NaN/infinite by step {step}/{self.total}"
        raise NonFiniteError(f"{self.what}: {where} (precision {self.precision}). The training diverged; try a "
                             f"lower learning rate (e.g. 10x lower), or mixed_precision fp32 or bf16 instead of "
                             f"fp16")
