"""Forward-Forward layers and networks.

A layer sees its input rescaled to a fixed length (only the direction of the previous
layer's activity passes on), applies a linear map and a ReLU, and scores the result by its
goodness

.. math::

    g(h) = \\sum_j h_j^2 \\quad\\text{or}\\quad g(h) = \\tfrac{1}{H} \\sum_j h_j^2,

with :math:`p(\\text{positive}) = \\sigma(g - \\theta)`. Each layer is trained by its own
loss (:func:`forwardforward.functional.ff_loss`) on detached inputs, so no gradient ever
crosses a layer boundary.

In supervised FF the label is written into the first ``C`` input features as a one-hot
vector; a negative example is the same image carrying a wrong label. In unsupervised FF
no label is written and the negatives are hybrid images
(:mod:`forwardforward.negatives`); a linear read-out of the last layers classifies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from forwardforward.config import ModelConfig

EPS = 1e-12  # keeps the rescaling finite (and its gradient finite) on an all-zero row


def rescale(x: Tensor, unit: bool = False, eps: float = EPS) -> Tensor:
    """Rescale each row of ``x`` to mean square 1 (length sqrt(D)), or to length 1.

    .. math::

        \\hat x = \\frac{x}{\\sqrt{\\operatorname{mean}(x^2) + \\epsilon}}
        \\quad(\\text{divided once more by } \\sqrt{D} \\text{ when ``unit``})

    The ``eps`` under the root makes an all-zero row map to zeros with a finite gradient,
    where dividing by the norm (or adding eps outside the root) gives NaN.

    Args:
        x: activities, shape ``(B, D)``.
        unit: scale to length 1 instead of sqrt(D).
        eps: added to the mean square.

    Returns:
        Tensor of shape ``(B, D)``.
    """
    acc = torch.promote_types(x.dtype, torch.float32)
    ms = x.to(acc).pow(2).mean(dim=1, keepdim=True)  # (B, 1), float32 even under bf16
    if unit:
        ms = ms * x.shape[1]
    return x * torch.rsqrt(ms + eps).to(x.dtype)


def goodness(h: Tensor, kind: str = "sum") -> Tensor:
    """Goodness of each row: :math:`\\sum_j h_j^2` (``"sum"``) or its mean (``"mean"``).

    Summed in float32 at least, whatever the dtype of ``h``. Returns shape ``(B,)``.
    """
    acc = torch.promote_types(h.dtype, torch.float32)
    g = torch.linalg.vector_norm(h, dim=1, dtype=acc).square()  # (B,)
    return g / h.shape[1] if kind == "mean" else g


def overlay_labels(x: Tensor, y: Tensor, num_classes: int, value: float = 1.0) -> Tensor:
    """Copy of ``x`` with the first ``num_classes`` features replaced by one-hot ``y``.

    Args:
        x: images, shape ``(B, D)``.
        y: labels, shape ``(B,)``, int64 in ``0..num_classes-1``.

    Returns:
        Tensor of shape ``(B, D)``.
    """
    out = x.clone()
    out[:, :num_classes] = 0
    out.scatter_(1, y[:, None], value)
    return out


def overlay_neutral(x: Tensor, num_classes: int, value: float = 1.0) -> Tensor:
    """Copy of ``x`` whose first ``num_classes`` features all equal ``value / num_classes``."""
    out = x.clone()
    out[:, :num_classes] = value / num_classes
    return out


def wrong_labels(y: Tensor, num_classes: int, generator: torch.Generator | None = None) -> Tensor:
    """A label drawn uniformly among the ``num_classes - 1`` wrong ones, for each of ``y``.

    .. math:: y^- = (y + k) \\bmod C, \\quad k \\sim \\mathcal{U}\\{1, \\dots, C - 1\\}

    so the true label is never drawn (a permutation of the batch's labels keeps it about
    one time in ten, and always on a batch of one class).
    """
    k = torch.randint(1, num_classes, y.shape, device=y.device, generator=generator)
    return (y + k) % num_classes


class FFLayer(nn.Module):
    """One Forward-Forward layer: rescale, linear, ReLU.

    .. math:: h = \\operatorname{relu}(W \\hat x + b)
    """

    def __init__(self, in_features: int, out_features: int, unit_norm: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.unit_norm = unit_norm

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.linear(rescale(x, self.unit_norm)))


def peer_penalty(m: Tensor) -> Tensor:
    """Peer-normalization penalty: mean squared deviation of each unit from the layer mean.

    .. math:: P(m) = \\frac{1}{H} \\sum_j \\Big(m_j - \\frac{1}{H} \\sum_k m_k\\Big)^2

    Zero exactly when every unit has the same mean activity :math:`m_j`.

    Args:
        m: mean activity of each unit, shape ``(H,)``.

    Returns:
        A scalar, float32 or wider.
    """
    m = m.to(torch.promote_types(m.dtype, torch.float32))
    return (m - m.mean()).pow(2).mean()


class PeerNorm(nn.Module):
    """Running mean activity of a layer's units and its :func:`peer_penalty`.

    Peer normalization as published with loeweX/Forward-Forward: each call updates

    .. math:: m \\leftarrow \\mu\\, \\operatorname{sg}(m) + (1 - \\mu)\\, \\bar h^+,
        \\qquad \\bar h^+_j = \\operatorname{mean}_b h^+_{bj}

    on the positive data only, and returns :math:`P(m)`; its gradient reaches the layer
    through this batch's :math:`\\bar h^+` alone (:math:`\\operatorname{sg}`: stop gradient).
    It pushes units that are rarely active up and busy ones down, so none stays dead.

    Note:
        The running mean starts at zero (the published code starts at 0.5); a constant
        start cancels in :math:`m_j - \\operatorname{mean}_k m_k`, so the penalty is the same.
    """

    def __init__(self, width: int, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(width))

    def forward(self, h_pos: Tensor) -> Tensor:
        mu = self.momentum
        h = h_pos.to(torch.promote_types(h_pos.dtype, torch.float32))
        m = mu * self.running_mean + (1 - mu) * h.mean(dim=0)  # (H,)
        self.running_mean.copy_(m.detach())
        return peer_penalty(m)


class FFNet(nn.Module):
    """A stack of :class:`FFLayer` with its per-layer thresholds and label overlay.

    Args:
        in_features: input width ``D`` (supervised: the label occupies its first
            ``num_classes``).
        config: widths, goodness, thresholds, mode, peer normalization.
        num_classes: number of labels ``C``.
    """

    def __init__(self, in_features: int, config: ModelConfig, num_classes: int = 10) -> None:
        super().__init__()
        self.supervised = config.mode == "supervised"
        if self.supervised and in_features <= num_classes:
            raise ValueError(f"input width {in_features} leaves no room for {num_classes} labels")
        self.config = config
        self.num_classes = num_classes
        widths = (in_features, *config.layers)
        unit = config.norm_scale == "unit"
        self.layers = nn.ModuleList(
            FFLayer(a, b, unit) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.thetas = [config.theta(w) for w in config.layers]
        self.peer = None
        if config.peer_norm:
            self.peer = nn.ModuleList(PeerNorm(w, config.peer_momentum) for w in config.layers)

    def layer_goodness(self, x: Tensor) -> Tensor:
        """Goodness of every layer for inputs ``x`` (labels already written in).

        Returns:
            Tensor of shape ``(L, B)``, float32.
        """
        out = []
        for layer in self.layers:
            x = layer(x)
            out.append(goodness(x, self.config.goodness))
        return torch.stack(out)  # (L, B)

    def activities(self, x: Tensor) -> list[Tensor]:
        """The rescaled activities of every layer for inputs ``x``, each ``(B, H_l)``."""
        out = []
        for layer in self.layers:
            x = layer(x)
            out.append(rescale(x, layer.unit_norm))
        return out

    def label_scores(self, x: Tensor, first_layer: int | None = None) -> Tensor:
        """Goodness summed over layers for every label, all labels in one batched pass.

        The paper's rule (``score_layers="skip-first"``) sums over all layers but the first;
        a one-layer net uses its only layer. ``"all"`` sums over every layer.

        Args:
            x: images, shape ``(B, D)``.
            first_layer: first layer counted (default: from ``score_layers``).

        Returns:
            Tensor of shape ``(B, C)``: the score of each label.
        """
        B, D = x.shape
        C = self.num_classes
        if not self.supervised:
            raise ValueError("label scores need supervised mode; an unsupervised net has no label")
        if first_layer is None:
            skip = self.config.score_layers == "skip-first" and len(self.layers) > 1
            first_layer = 1 if skip else 0

        h = self.first_layer_all_labels(x).flatten(0, 1)  # (B*C, H1)
        g = [goodness(h, self.config.goodness)]
        for layer in self.layers[1:]:
            h = layer(h)
            g.append(goodness(h, self.config.goodness))
        return torch.stack(g)[first_layer:].sum(dim=0).view(B, C)

    def first_layer_all_labels(self, x: Tensor) -> Tensor:
        r"""Layer 1's activities for each image under every label, shape ``(B, C, H1)``.

        Only the label pixels differ between the C copies of an image, and one-hot labels
        of equal value give every copy the same length, so with :math:`x_0` the image with
        blank label pixels and :math:`s` its rescaling factor

        .. math:: W \hat x_c + b = s W x_0 + b + s v W_{:, c},

        one product for the image plus a column per label: C times fewer FLOPs than
        running the C labelled copies.
        """
        B, D = x.shape
        C, v = self.num_classes, self.config.label_value
        linear = self.layers[0].linear

        x0 = x.clone()
        x0[:, :C] = 0
        acc = torch.promote_types(x.dtype, torch.float32)
        ms = (x0.to(acc).pow(2).sum(dim=1) + v * v) / D  # (B,) mean square of a copy
        if self.layers[0].unit_norm:
            ms = ms * D
        s = torch.rsqrt(ms + EPS)  # (B,)

        base = torch.nn.functional.linear(x0 * s[:, None].to(x.dtype), linear.weight, linear.bias)
        labels = (v * linear.weight[:, :C]).t()  # (C, H1)
        pre = base[:, None, :] + s[:, None, None].to(base.dtype) * labels.to(base.dtype)
        return torch.relu(pre)  # (B, C, H1)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """The label of highest summed goodness for each image, shape ``(B,)``."""
        return self.label_scores(x).argmax(dim=1)


class Readout(nn.Module):
    """Linear softmax classifier on the rescaled activities of the upper layers.

    Supervised, it reads layers 2..L (a one-layer net: that layer) of each image with a
    neutral label (every label pixel equal). Unsupervised, it reads the last three layers
    (all of them when there are fewer) of the bare image, as in the paper. It is trained by
    cross-entropy on detached activities, so no gradient reaches the FF layers.
    """

    def __init__(self, net: FFNet) -> None:
        super().__init__()
        widths = net.config.layers
        L = len(widths)
        self.first = (1 if L > 1 else 0) if net.supervised else max(0, L - 3)
        self.linear = nn.Linear(sum(widths[self.first :]), net.num_classes)

    def features(self, net: FFNet, x: Tensor) -> Tensor:
        """Concatenated activities of the read layers, shape ``(B, sum H_l)``, detached."""
        with torch.no_grad():
            if net.supervised:
                x = overlay_neutral(x, net.num_classes, net.config.label_value)
            hs = net.activities(x)[self.first :]
            return torch.cat(hs, dim=1).to(self.linear.weight.dtype)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features)  # (B, C) logits
