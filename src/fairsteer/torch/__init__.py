"""Torch backend: streaming moments, steering maps as modules, a forward hook.

Optional: needs ``torch`` (the ``torch`` extra). The core never imports it.

- :class:`StreamingMoments` accumulates per-cell count / mean / centred
  scatter from batches of hidden states in float64 and yields the same
  :class:`fairsteer.stats.CellStats` as one numpy fit (Chan's merge).
- :class:`SteeringModule` is a :class:`fairsteer.maps.SteeringMaps` as a
  ``torch.nn.Module`` (any device): labelled, soft, hard or no steering.
- :func:`steer_layer` attaches a function to one layer's output through a
  forward hook and always removes it, also when the body raises.
- :func:`steer_model` steers several layers at once with their modules, per
  token, with per-sequence or per-token groups and padding left alone.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from fairsteer.errors import InputError
from fairsteer.fit import Fitter
from fairsteer.kernels import CellKernels
from fairsteer.maps import SteeringMaps
from fairsteer.model import GaussianModel
from fairsteer.options import UNLABELED_MODES
from fairsteer.stats import CellStats

__all__ = ["SteeringModule", "StreamingMoments", "steer_layer", "steer_model"]


class StreamingMoments:
    """Per-(group, class) moments of a stream of batches, accumulated in float64.

    A :class:`fairsteer.fit.Fitter` fed with torch batches: each batch is
    brought to the CPU in float64 and goes through the same statistics
    kernel as a numpy fit (:func:`fairsteer.stats.cell_statistics_from_codes`),
    merged exactly (Chan's update), so the result equals one numpy fit of all
    rows to round-off.

    Parameters
    ----------
    groups, classes : sequence
        Label sets; batches pass integer codes into them.
    **fit_options
        ``covariance``, ``shrinkage``, ``features`` of the model :meth:`model`
        builds (normal family: hidden states are not positive).
    """

    def __init__(
        self, groups: Sequence[Hashable], classes: Sequence[Hashable], **fit_options: Any
    ) -> None:
        self.groups, self.classes = tuple(groups), tuple(classes)
        self.fitter = Fitter(group_labels=self.groups, class_labels=self.classes, **fit_options)

    @torch.no_grad()
    def update(self, hidden: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> None:
        """Add a batch: ``hidden`` (n, d) any dtype/device, integer ``labels`` and ``groups``."""
        if hidden.ndim != 2:
            raise InputError(f"hidden states must be (n, d), got shape {tuple(hidden.shape)}")
        m, K = len(self.groups), len(self.classes)
        g = groups.detach().cpu().long().numpy().ravel()
        c = labels.detach().cpu().long().numpy().ravel()
        if g.size != hidden.shape[0] or c.size != hidden.shape[0]:
            raise InputError("labels and groups need one entry per row of hidden")
        if g.size and (g.min() < 0 or g.max() >= m or c.min() < 0 or c.max() >= K):
            raise InputError("label or group code out of range")
        x = hidden.detach().to("cpu", torch.float64).numpy()
        if not bool(np.isfinite(x).all()):
            raise InputError("hidden states hold NaN or inf")
        self.fitter.update_codes(x, g, c)

    @property
    def stats(self) -> CellStats:
        if self.fitter.stats is None:
            raise InputError("no batch was added; call update first")
        return self.fitter.stats

    def model(self) -> GaussianModel:
        """The model of every row seen (:meth:`fairsteer.fit.Fitter.model`)."""
        return self.fitter.model()


class SteeringModule(torch.nn.Module):
    """Per-cell OT steering maps as a torch module.

    ``forward(x, groups, labels=None, mode="soft")``: with labels, each row
    goes through its cell's map; without, ``mode`` is ``soft`` (posterior-
    weighted under the fitted model), ``hard`` (most probable class) or
    ``none``. Normal-family models only (representations are not positive).
    The formulas are those of the numpy maps (:class:`fairsteer.kernels.CellKernels`),
    evaluated in float64 on the module's device.
    """

    def __init__(self, maps: SteeringMaps) -> None:
        super().__init__()
        if not maps.original.family.is_identity:
            raise InputError("SteeringModule supports normal-family models only")
        self._kernels = CellKernels(maps.original, maps)
        self._names = sorted(self._kernels.params)
        for name in self._names:
            value = np.array(self._kernels.params[name], dtype=np.float64)  # a writable copy
            self.register_buffer(f"k_{name}", torch.as_tensor(value, dtype=torch.float64))

    @property
    def kernels(self) -> CellKernels:
        """The kernels evaluated on this module's buffers (current device)."""
        return self._kernels.with_params({n: getattr(self, f"k_{n}") for n in self._names})

    def log_joint(self, x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """Class logits per row (n, K): the log joint up to a per-row constant."""
        return self.kernels.logits(x.to(torch.float64), groups.to(x.device).long())

    def forward(
        self,
        x: torch.Tensor,
        groups: torch.Tensor,
        labels: torch.Tensor | None = None,
        mode: str = "soft",
    ) -> torch.Tensor:
        if mode not in UNLABELED_MODES:
            raise InputError(f"mode must be one of {UNLABELED_MODES}, got {mode!r}")
        if (labels is None and mode == "none") or x.shape[0] == 0:
            return x
        dtype = x.dtype
        z = x.to(torch.float64)
        groups = groups.to(z.device).long()
        kern = self.kernels
        if labels is None:
            logits = kern.logits(z, groups)
            if mode == "soft":
                return kern.soft_steer(z, groups, torch.softmax(logits, dim=1)).to(dtype)
            labels = logits.argmax(dim=1)
        return kern.steer(z, groups, labels.to(z.device).long()).to(dtype)


@contextlib.contextmanager
def steer_layer(
    layer: torch.nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[Any]:
    """Replace ``layer``'s output ``h`` (or ``h[0]`` of a tuple) by ``fn(h)`` inside the block.

    The hook is removed on exit, also when the block raises.
    """

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (fn(output[0]), *output[1:])
        if hasattr(output, "last_hidden_state"):
            output.last_hidden_state = fn(output.last_hidden_state)
            return output
        return fn(output)

    # prepend: run before hooks the model registered itself (transformers records
    # hidden_states with forward hooks), so they see the steered output
    handle = layer.register_forward_hook(hook, prepend=True)
    try:
        yield handle
    finally:
        handle.remove()


class _Steering:
    """The groups (and mask) the hooks of :func:`steer_model` read; change them between calls."""

    def __init__(self) -> None:
        self.groups: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None

    def set_groups(
        self,
        groups: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> None:
        """Group codes per sequence (batch,) or per token (batch, seq); optional labels alike.

        ``attention_mask`` (batch, seq): tokens with mask 0 (padding) are left
        unchanged.
        """
        self.groups = torch.as_tensor(groups).long()
        self.labels = None if labels is None else torch.as_tensor(labels).long()
        self.mask = None if attention_mask is None else torch.as_tensor(attention_mask).bool()

    @staticmethod
    def _per_token(value: torch.Tensor, b: int, s: int, what: str) -> torch.Tensor:
        if value.ndim == 1 and value.shape[0] == b:
            return value[:, None].expand(b, s)
        if value.ndim == 2 and tuple(value.shape) == (b, s):
            return value
        raise InputError(
            f"{what} must have shape (batch,) = ({b},) or (batch, seq) = ({b}, {s}), got "
            f"{tuple(value.shape)}; per-token values cannot follow cached generation (one new "
            "token per step): pass one value per sequence there"
        )

    def apply(
        self, module: SteeringModule, h: torch.Tensor, mode: str, alpha: float
    ) -> torch.Tensor:
        if self.groups is None:
            raise InputError("no groups set: pass groups to steer_model or call set_groups")
        squeeze = h.ndim == 2
        x = h[:, None, :] if squeeze else h
        b, s, d = x.shape
        dev = x.device
        groups = self._per_token(self.groups.to(dev), b, s, "groups").reshape(-1)
        labels = None
        if self.labels is not None:
            labels = self._per_token(self.labels.to(dev), b, s, "labels").reshape(-1)
        flat = x.reshape(-1, d)
        steered = module(flat, groups, labels, mode=mode)
        out = flat + alpha * (steered - flat) if alpha != 1.0 else steered
        if self.mask is not None:
            keep = ~self._per_token(self.mask.to(dev), b, s, "attention_mask").reshape(-1)
            out = torch.where(keep[:, None], flat, out)
        out = out.reshape(b, s, d)
        return out[:, 0, :] if squeeze else out


@contextlib.contextmanager
def steer_model(
    model: torch.nn.Module,
    steering: dict[str | torch.nn.Module, SteeringModule],
    groups: torch.Tensor | None = None,
    *,
    labels: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    mode: str = "soft",
    alpha: float = 1.0,
) -> Iterator[_Steering]:
    r"""Steer several layers of a (Hugging Face) model at once, per token.

    Each layer's output h (a tensor, the first element of a tuple, or
    ``last_hidden_state``) of shape (batch, seq, d) is replaced by
    :math:`h + \alpha (S(h) - h)` with ``S`` the layer's
    :class:`SteeringModule`, evaluated for every token with the group of its
    sequence (or its own group). Hooks run before the model's own hooks and are
    all removed on exit, also when the body raises.

    Parameters
    ----------
    model : torch.nn.Module
    steering : dict
        Layer (a submodule or its dotted name, e.g. ``"encoder.layer.3"``) to the
        :class:`SteeringModule` fitted on that layer's states.
    groups : tensor, optional
        Group codes per sequence (batch,) or per token (batch, seq). May be set
        or changed later with the yielded handle's ``set_groups``.
    labels : tensor, optional
        Class codes like ``groups`` (labelled maps); default: ``mode``.
    attention_mask : tensor, optional
        (batch, seq); padding tokens (0) are left unchanged.
    mode : {"soft", "hard", "none"}
        How unlabelled tokens are steered (:class:`SteeringModule`).
    alpha : float in [0, 1]
        Strength: displacement interpolation between h and S(h) (THEORY 8).

    Yields
    ------
    handle
        ``handle.set_groups(groups, labels=None, attention_mask=None)``.

    Notes
    -----
    The design follows the scrubbing context of concept-erasure (Belrose et
    al. 2023, "LEACE: Perfect linear concept erasure in closed form",
    https://arxiv.org/abs/2306.03819): one hook per layer, removed on exit.
    """
    if mode not in UNLABELED_MODES:
        raise InputError(f"mode must be one of {UNLABELED_MODES}, got {mode!r}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"alpha must lie in [0, 1], got {alpha}")
    handle = _Steering()
    if groups is not None:
        handle.set_groups(groups, labels, attention_mask)
    layers = []
    for key, module in steering.items():
        if isinstance(key, str):
            try:
                key = model.get_submodule(key)
            except AttributeError:
                raise InputError(f"model has no submodule {key!r}") from None
        if not isinstance(module, SteeringModule):
            raise InputError("steering values must be SteeringModule objects")
        layers.append((key, module))
    with contextlib.ExitStack() as stack:
        for layer, module in layers:
            fn = functools.partial(_apply, handle, module, mode, float(alpha))
            stack.enter_context(steer_layer(layer, fn))
        yield handle


def _apply(
    handle: _Steering, module: SteeringModule, mode: str, alpha: float, h: torch.Tensor
) -> torch.Tensor:
    return handle.apply(module, h, mode, alpha)
