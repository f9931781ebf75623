"""The Grad-CAM family on the converted torch module: Grad-CAM, Grad-CAM++, XGrad-CAM, Layer-CAM,
HiRes-CAM, Smooth Grad-CAM++ and Guided Grad-CAM.

Each works on any spatial tensor (NCHW, NHWC, or a token grid reshaped to (C, h, w)),
taps it, and follows pytorch-grad-cam's definitions: channel weights (or element-wise
weights) times the activations, summed over channels, then ReLU. Maps are at the
layer's resolution and not normalised (rendering does that).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Sequence

import numpy as np
import torch

from ..errors import MethodError
from . import register
from .base import Method, RawMaps
from .gradient import input_gradients
from .layout import channels_first_torch, chw_shape
from .noise import LazyNoise, noise_std, noise_tunnel
from .perturb import batches
from .torch_common import forward, gradients, layer_info, minmax, numpy_maps, reduce_channels, to_tensor, upsample

if TYPE_CHECKING:
    from ..images import Prepared
    from ..targets import Target
    from .base import MethodContext

log = logging.getLogger(__name__)
EPS_PLUSPLUS = 1e-6   # pytorch-grad-cam's Grad-CAM++ denominator epsilon
EPS_XGRAD = 1e-7      # pytorch-grad-cam's XGrad-CAM denominator epsilon


def layer_gradients(context: "MethodContext", batch: "Prepared", targets: Sequence["Target"], layer: str
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(activations, gradients) of the layer as (N, C, h, w), in chunks of the context's batch size."""
    info = layer_info(context, layer)
    acts, grads = [], []
    for rows in batches(len(batch), context.runtime.batch_size):
        result = gradients(context, to_tensor(context, batch.x[rows]), targets[rows], taps=[layer],
                           wrt_input=False)
        acts.append(channels_first_torch(result.values[layer], info))
        grads.append(channels_first_torch(result.taps[layer], info))
    return torch.cat(acts), torch.cat(grads)


def _expand(weights: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N, C) channel weights broadcastable against (N, C, *spatial)."""
    return weights.reshape(weights.shape + (1,) * (like.dim() - 2))


def grad_cam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Selvaraju et al.: channel weights = spatial mean of the gradient."""
    return torch.relu((_expand(grads.flatten(2).mean(-1), acts) * acts).sum(1))


def plusplus_weights(acts: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor, d3: torch.Tensor) -> torch.Tensor:
    """Chattopadhyay et al. eq. 19 with the exponential-score closed form: alpha = d2 / (2 d2 + sum(A) d3),
    zero where the gradient is zero; weights = sum over positions of alpha * relu(d1)."""
    sum_acts = _expand(acts.flatten(2).sum(-1), acts)
    alpha = d2 / (2 * d2 + sum_acts * d3 + EPS_PLUSPLUS)
    alpha = torch.where(d2 != 0, alpha, torch.zeros_like(alpha))
    return (torch.relu(d1) * alpha).flatten(2).sum(-1)


def grad_cam_plusplus(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ as pytorch-grad-cam: second and third derivatives as powers of the gradient."""
    g2 = grads * grads
    weights = plusplus_weights(acts, grads, g2, g2 * grads)
    return torch.relu((_expand(weights, acts) * acts).sum(1))


def xgrad_cam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Fu et al.: weights = sum(grad * A) / sum(A) per channel."""
    weights = (grads * acts).flatten(2).sum(-1) / (acts.flatten(2).sum(-1) + EPS_XGRAD)
    return torch.relu((_expand(weights, acts) * acts).sum(1))


def layer_cam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Jiang et al.: element-wise weights relu(grad) times A."""
    return torch.relu((torch.relu(grads) * acts).sum(1))


def hires_cam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Draelos & Carin: element-wise grad times A (no averaging)."""
    return torch.relu((grads * acts).sum(1))


class _GradCAMBase(Method):
    """One tap of the layer, one backward; subclasses name the map function."""
    engine = "torch"
    uses_layer = True

    combine: ClassVar[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]  # (acts, grads) -> maps

    def explain(self, context, batch, targets, layer=None) -> RawMaps:
        acts, grads = layer_gradients(context, batch, targets, layer)
        return RawMaps(numpy_maps(type(self).combine(acts, grads)))


@register
class GradCAM(_GradCAMBase):
    """Selvaraju et al. (2017): ReLU(sum_k mean(dY/dA_k) A_k)."""
    name = "grad-cam"
    summary = "Grad-CAM: activations weighted by the spatially averaged gradient"
    combine = staticmethod(grad_cam)


@register
class GradCAMPlusPlus(_GradCAMBase):
    """Chattopadhyay et al. (2018): positive gradients weighted per position by second/third-order terms."""
    name = "grad-cam++"
    summary = "Grad-CAM++: per-position weighted positive gradients"
    combine = staticmethod(grad_cam_plusplus)


@register
class XGradCAM(_GradCAMBase):
    """Fu et al. (2020): activation-normalised gradient weights (axiom-based Grad-CAM)."""
    name = "xgrad-cam"
    summary = "XGrad-CAM: gradient weights normalised by the activations"
    combine = staticmethod(xgrad_cam)


@register
class LayerCAM(_GradCAMBase):
    """Jiang et al. (2021): element-wise positive gradient times activation; works on shallow layers too."""
    name = "layer-cam"
    summary = "Layer-CAM: element-wise relu(gradient) x activation"
    combine = staticmethod(layer_cam)


@register
class HiResCAM(_GradCAMBase):
    """Draelos & Carin (2020): element-wise gradient times activation, faithful to the score for GAP heads."""
    name = "hires-cam"
    summary = "HiRes-CAM: element-wise gradient x activation"
    combine = staticmethod(hires_cam)


@register
class GuidedGradCAM(Method):
    """Selvaraju et al. (2017): guided backpropagation times Grad-CAM upsampled to the input (pixel resolution).

    The Grad-CAM map is bilinearly upsampled and min-max scaled to [0, 1] (as pytorch-grad-cam
    returns it), then multiplied into the guided gradient; the map reduces channels like
    guided-backprop; extras hold the per-channel product.
    """
    name = "guided-grad-cam"
    engine = "torch"
    summary = "Guided Grad-CAM: guided backprop x upsampled Grad-CAM"
    uses_layer = True

    @dataclass(frozen=True)
    class Params:
        signed: bool = False  # False: max |value| over channels; True: signed channel sum

    def explain(self, context, batch, targets, layer=None) -> RawMaps:
        acts, grads = layer_gradients(context, batch, targets, layer)
        cam = minmax(upsample(grad_cam(acts, grads), batch.hw))
        guided = input_gradients(context, batch, targets, rule="guided")
        layout = batch.spec.layout
        weight = cam[:, None] if layout == "NCHW" else cam[..., None]
        product = guided * weight
        maps = reduce_channels(product, layout, self.params.signed)
        return RawMaps(numpy_maps(maps), [{"gradient": g} for g in product.cpu().numpy()])


@register
class SmoothGradCAMPlusPlus(Method):
    """Omeiza et al. (2019): Grad-CAM++ whose first, second and third derivatives are averaged over `n`
    noisy copies of the image (SmoothGrad), on the activations of the clean image.

    D1, D2, D3 are the means of g, g^2, g^3 over the copies (the exponential-score closed form of
    Grad-CAM++); alpha = D2 / (2 D2 + sum(A) D3), w_k = sum_ij alpha relu(D1), map = ReLU(sum_k w_k A_k).
    n = 0 is the paper's plain case: the clean image's gradient, which equals grad-cam++.

    The paper's inspection options: `filters` gives one map per chosen feature map k, ReLU(w_k A_k), in
    `extras["filter_maps"]` (F, h, w) in the order of `extras["filters"]`; the main map is ReLU of their sum.
    `neurons` gives (row, col) positions of the layer: the weights come from the derivatives at those
    positions and every other activation is zeroed, so the map is non-zero at the chosen neurons only.
    With `region=True`, `neurons` holds two corners (r1, c1, r2, c2) of a rectangle (inclusive).
    Where the layer's gradient does not depend on the input (a layer right before global average pooling
    and a linear head) smoothing cannot change the map: the Attribution's `warnings` say so.
    """
    name = "smooth-grad-cam++"
    engine = "torch"
    summary = "Smooth Grad-CAM++: Grad-CAM++ with derivatives averaged over noisy copies; per-filter/neuron maps"
    uses_layer = True

    @dataclass(frozen=True)
    class Params:
        n: int = 25               # noisy copies per image (0: the clean image only, plain Grad-CAM++)
        sigma: float = 0.15       # noise std as a fraction of the image's value range (max - min)
        batch_size: int = 25      # noisy copies per forward/backward pass
        seed: int = 0             # noise seed (each image draws from its own generator seeded with it)
        filters: tuple = ()       # feature-map (channel) indices: one map each; empty: all, one map
        neurons: tuple = ()       # layer positions: row,col pairs (flat r1,c1,r2,c2,...); empty: all
        region: bool = False      # neurons are two corners of a rectangle of positions

    @classmethod
    def cost(cls, params, input_hw, layer_shape=None) -> int:
        return max(1, int(params.n))

    def explain(self, context, batch, targets, layer=None) -> RawMaps:
        p = self.params
        if p.n < 0:
            raise MethodError("Parameter 'n' of method 'smooth-grad-cam++' must be 0 (no noise) or more.")
        info = layer_info(context, layer)
        layout = batch.spec.layout
        maps, extras = [], []
        for i, image in enumerate(batch.x):
            acts, d1, d2, d3 = self._moments(context, image, targets[i], layer, info, layout)
            cam, extra = self._cam(acts, d1, d2, d3)
            if p.n > 1 and _constant_gradient(d1, d2):
                note = (f"The gradient at layer '{layer}' does not depend on the input (global average pooling "
                        "then a linear head), so smoothing cannot change the map: it equals grad-cam++; use n=0 "
                        "or an earlier layer.")
                log.warning(note)
                extra["warnings"] = [note]
            maps.append(cam)
            extras.append(extra)
        return RawMaps(numpy_maps(torch.cat(maps)), extras)

    def _moments(self, context, image, target, layer, info, layout):
        """Clean activations (1, C, h, w) and the mean of g, g^2, g^3 over the noisy copies (n = 0: clean g)."""
        p = self.params
        x = to_tensor(context, image)
        if p.n == 0:
            result = gradients(context, x[None], [target], taps=[layer], wrt_input=False)
            acts = channels_first_torch(result.values[layer], info)
            g = channels_first_torch(result.taps[layer], info)
            return acts, g, g * g, g * g * g
        with torch.no_grad():
            _, tapped = forward(context, x[None], [layer])
        acts = channels_first_torch(tapped[layer], info)
        noise = LazyNoise(chw_shape(image, layout), p.n, noise_std(image, p.sigma), p.seed, layout)

        def layer_gradient(noisy: torch.Tensor) -> torch.Tensor:
            tapped = gradients(context, noisy, [target] * len(noisy), taps=[layer], wrt_input=False).taps
            return channels_first_torch(tapped[layer], info)

        d1, d2, d3 = noise_tunnel(layer_gradient, x, noise, p.batch_size, order=3)
        return acts, d1[None], d2[None], d3[None]

    def _cam(self, acts, d1, d2, d3) -> tuple[torch.Tensor, dict]:
        """The map (1, h, w) and, with `filters`, one map per chosen filter in extras."""
        c, h, w = acts.shape[1:]
        position = self._position_mask(h, w).to(acts.device)
        weights = plusplus_weights(acts, d1 * position, d2 * position, d3)
        kept = acts * position if self.params.neurons else acts  # only the chosen neurons are visualised
        channel = self._channel_mask(c).to(acts.device)
        cam = torch.relu(((weights * channel)[..., None, None] * kept).sum(1))
        if not self.params.filters:
            return cam, {}
        chosen = [int(k) for k in self.params.filters]
        per_filter = torch.relu(weights[0, chosen, None, None] * kept[0, chosen])
        return cam, {"filters": chosen, "filter_maps": numpy_maps(per_filter)}

    def _channel_mask(self, c: int) -> torch.Tensor:
        if not self.params.filters:
            return torch.ones(c)
        keep = [int(k) for k in self.params.filters]
        bad = [k for k in keep if not 0 <= k < c]
        if bad:
            raise MethodError(f"Filter {bad[0]} of method 'smooth-grad-cam++' is out of range: the layer has "
                              f"{c} feature maps (0..{c - 1}).")
        mask = torch.zeros(c)
        mask[keep] = 1
        return mask

    def _position_mask(self, h: int, w: int) -> torch.Tensor:
        flat = [int(v) for v in np.ravel(np.asarray(self.params.neurons, dtype=np.float64))]
        if not flat:
            return torch.ones(h, w)
        if len(flat) % 2:
            raise MethodError("Parameter 'neurons' of method 'smooth-grad-cam++' takes row,col pairs.")
        points = list(zip(flat[0::2], flat[1::2]))
        bad = [(r, c) for r, c in points if not (0 <= r < h and 0 <= c < w)]
        if bad:
            raise MethodError(f"Neuron {bad[0]} of method 'smooth-grad-cam++' lies outside the layer's "
                              f"{h}x{w} grid.")
        mask = torch.zeros(h, w)
        if self.params.region:
            if len(points) != 2:
                raise MethodError("With region=true, 'neurons' of method 'smooth-grad-cam++' takes two corners "
                                  "r1,c1,r2,c2.")
            (r1, c1), (r2, c2) = points
            mask[min(r1, r2):max(r1, r2) + 1, min(c1, c2):max(c1, c2) + 1] = 1
        else:
            for r, c in points:
                mask[r, c] = 1
        return mask


def _constant_gradient(d1: torch.Tensor, d2: torch.Tensor) -> bool:
    """True when every noisy copy had the same layer gradient (mean of g^2 equals the square of the mean)."""
    spread = (d2 - d1 * d1).abs().max()
    return bool(spread <= 1e-5 * (d1 * d1).max() + 1e-20)
