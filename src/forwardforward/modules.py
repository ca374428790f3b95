"""``nn.Module`` wrappers of the softplus family: thin shells over :mod:`.functional`.

Each module validates its options once, in ``__init__`` (``ValueError``), holds tensors
as buffers so that ``.to(device)`` moves them, and calls the function of the same name.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from forwardforward import functional as FF
from forwardforward.functional import FFKind, Reduction, TargetFormat

__all__ = ["FFLoss", "Softplus", "SoftplusLoss"]


class Softplus(nn.Module):
    r"""Elementwise :math:`\zeta_\beta(x) = \log(1 + e^{\beta x})/\beta`, exact by default.

    See :func:`forwardforward.functional.softplus`.

    Args:
        beta: sharpness :math:`\beta > 0`.
        threshold: None (exact everywhere) or PyTorch's linear cut-off on :math:`\beta x`.

    Shape:
        input ``(*)``, output ``(*)``, same dtype.
    """

    def __init__(self, beta: float = 1.0, threshold: float | None = None) -> None:
        super().__init__()
        self.beta = FF.check_positive("beta", beta)
        self.threshold = FF.check_threshold(threshold)

    def forward(self, x: Tensor) -> Tensor:
        return FF.softplus(x, self.beta, self.threshold)

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}, threshold={self.threshold}"


class SoftplusLoss(nn.Module):
    r"""Binary cross-entropy of logits written with the softplus.

    See :func:`forwardforward.functional.softplus_loss`; ``weight`` and ``pos_weight``
    mean what they mean in ``nn.BCEWithLogitsLoss``.

    Args:
        target_format: ``"sign"``, ``"binary"`` or ``"probability"``.
        weight: per-element weight, broadcastable to the loss, or None.
        pos_weight: weight of the positive terms, one per class, or None.
        beta: sharpness of the softplus.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        logits ``(*)``, targets ``(*)``; output scalar, or ``(*)`` for ``"none"``.
    """

    weight: Tensor | None
    pos_weight: Tensor | None

    def __init__(
        self,
        *,
        target_format: TargetFormat = "sign",
        weight: Tensor | None = None,
        pos_weight: Tensor | None = None,
        beta: float = 1.0,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        self.target_format = FF.check_choice("target_format", target_format, FF.TARGET_FORMATS)
        self.reduction = FF.check_choice("reduction", reduction, FF.REDUCTIONS)
        self.beta = FF.check_positive("beta", beta)
        for name, w in (("weight", weight), ("pos_weight", pos_weight)):
            if w is not None and not isinstance(w, Tensor):
                raise ValueError(f"{name} must be a tensor or None, got {type(w).__name__}")
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return FF.softplus_loss(
            logits,
            targets,
            target_format=self.target_format,
            weight=self.weight,
            pos_weight=self.pos_weight,
            beta=self.beta,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"target_format={self.target_format!r}, beta={self.beta:g}, "
            f"reduction={self.reduction!r}"
        )


class FFLoss(nn.Module):
    r"""Forward-Forward layer loss on positive and negative goodness.

    See :func:`forwardforward.functional.ff_loss`: :math:`\zeta(\theta - g^+)` and
    :math:`\zeta(g^- - \theta)` for ``"softplus"``, :math:`\zeta(-\alpha(g^+ - g^-))` for
    ``"symba"``.

    Args:
        threshold: :math:`\theta`, a finite number (unused by ``"symba"``).
        kind: ``"softplus"`` or ``"symba"``.
        alpha: SymBa's scale :math:`\alpha > 0`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        goodness ``(B,)`` each; output scalar, or the term tensors for ``"none"``.
    """

    def __init__(
        self,
        threshold: float = 2.0,
        *,
        kind: FFKind = "softplus",
        alpha: float = 4.0,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        if FF.check_threshold(threshold) is None or not math.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number, got {threshold!r}")
        self.threshold = float(threshold)
        self.kind = FF.check_choice("kind", kind, FF.FF_KINDS)
        self.alpha = FF.check_positive("alpha", alpha)
        self.reduction = FF.check_choice("reduction", reduction, FF.REDUCTIONS)

    def forward(
        self, goodness_pos: Tensor, goodness_neg: Tensor
    ) -> Tensor | tuple[Tensor, Tensor]:
        return FF.ff_loss(
            goodness_pos,
            goodness_neg,
            self.threshold,
            kind=self.kind,
            alpha=self.alpha,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"threshold={self.threshold:g}, kind={self.kind!r}, alpha={self.alpha:g}, "
            f"reduction={self.reduction!r}"
        )
