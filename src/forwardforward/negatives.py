"""Negative data for Forward-Forward: hybrid images and model-sampled wrong labels.

Supervised FF makes a negative by writing a wrong label into a real image; the label is
drawn uniformly (:func:`forwardforward.model.wrong_labels`) or, as "hard negatives", in
proportion to the model's own probabilities of the wrong labels
(:func:`sample_wrong_labels`).

Unsupervised FF (Hinton, 2022, section 3.2) writes no label. Its negatives are hybrid
images: two real images joined through a mask of large regions,

.. math::

    x^- = m \\odot x_a + (1 - m) \\odot x_b,

where :math:`m` starts as a random bit image, is blurred :math:`k` times with the filter
:math:`[\\tfrac14, \\tfrac12, \\tfrac14]` along rows and along columns, and is thresholded
at 0.5 (:func:`blur_masks`). Short-range correlations of the two halves look like those of
a real digit; the shape as a whole does not, so a net can only tell them apart by
long-range structure.

Everything here works on whole batches on their device, with no per-image Python.
"""

from __future__ import annotations

import torch
from torch import Tensor

MAX_BLURS = 13  # 16**k times a blurred pixel must stay an integer below 2**53 (float64)


def blur_matrix(n: int, blurs: int, device: torch.device | str | None = None) -> Tensor:
    """The matrix of ``blurs`` passes of the integer filter ``[1, 2, 1]`` along ``n`` pixels.

    .. math:: M = T^k, \\qquad (T v)_i = v_{i-1} + 2 v_i + v_{i+1}

    with each edge pixel repeated beyond the border (:math:`v_{-1} = v_0`,
    :math:`v_n = v_{n-1}`), so every row of :math:`T` sums to 4 and a constant stays
    constant. Entries are integers below :math:`4^k`, exact in float64.

    Returns:
        float64 tensor of shape ``(n, n)``.
    """
    i = torch.arange(n, device=device)
    t = torch.zeros(n, n, dtype=torch.float64, device=device)
    t[i, i] = 2.0
    t[i[1:], i[:-1]] = 1.0
    t[i[:-1], i[1:]] = 1.0
    t[0, 0] += 1.0
    t[n - 1, n - 1] += 1.0
    return torch.linalg.matrix_power(t, blurs)  # (n, n)


def mask_from_bits(bits: Tensor, blurs: int) -> Tensor:
    """Threshold at 0.5 a bit image blurred ``blurs`` times along rows and columns.

    .. math::

        m = [\\, (F_c F_r)^k\\, b > \\tfrac12 \\,], \\qquad
        F = [\\tfrac14, \\tfrac12, \\tfrac14]

    Computed exactly as two matrix products with the integer filter ``[1, 2, 1]``
    (:func:`blur_matrix`): :math:`V = M_H\\, b\\, M_W^\\top` is :math:`16^k` times the
    blurred image, an integer below :math:`2^{53}`, so float64 holds it and the threshold
    :math:`16^k / 2` with no rounding. A pixel exactly at 0.5 keeps its own bit, which
    makes the rule symmetric: the mask of ``1 - b`` is ``1 - m``, so ones and zeros are
    equally likely.

    Args:
        bits: 0/1 images, shape ``(B, H, W)``, any integer, bool or float dtype.
        blurs: ``k``, rounds of blurring, 0 to :data:`MAX_BLURS`.

    Returns:
        Bool tensor of shape ``(B, H, W)``.
    """
    if not 0 <= blurs <= MAX_BLURS:
        raise ValueError(f"blurs must be in 0..{MAX_BLURS}, got {blurs}")
    B, H, W = bits.shape
    b = bits.to(torch.float64)

    m_h = blur_matrix(H, blurs, bits.device)  # (H, H)
    m_w = blur_matrix(W, blurs, bits.device)  # (W, W)
    v = m_h @ b @ m_w.T  # (B, H, W), 16**k times the blurred image

    twice, total = 2.0 * v, float(16**blurs)
    return (twice > total) | ((twice == total) & (b > 0))


def blur_masks(
    batch: int,
    image_shape: tuple[int, int],
    blurs: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Random masks of large regions, one per image: :func:`mask_from_bits` of fair bits.

    Args:
        batch: ``B``, number of masks.
        image_shape: ``(H, W)`` of one image.
        blurs: rounds of blurring (more rounds, larger regions; 10 gives about seven
            regions on a 28x28 image).
        generator: random source, on ``device``.

    Returns:
        Bool tensor of shape ``(B, H, W)``.
    """
    H, W = image_shape
    bits = torch.randint(0, 2, (batch, H, W), generator=generator, device=device)
    return mask_from_bits(bits, blurs)


def partner_index(batch: int, *, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> Tensor:
    """For each of ``batch`` images, the index of another image of the batch.

    A random permutation :math:`\\pi` is read as one cycle:
    :math:`j(\\pi_t) = \\pi_{t+1 \\bmod B}`, so no image is its own partner and every image
    is the partner of exactly one other.

    Returns:
        int64 tensor of shape ``(B,)``.

    Raises:
        ValueError: ``batch < 2`` (an image cannot be mixed with another).
    """
    if batch < 2:
        raise ValueError(f"hybrid images need at least 2 images per batch, got {batch}")
    pi = torch.randperm(batch, generator=generator, device=device)  # (B,)
    j = torch.empty_like(pi)
    j[pi] = pi.roll(-1)
    return j


def hybrid_images(
    x: Tensor,
    image_shape: tuple[int, int],
    blurs: int,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Hybrid negatives: each image joined with another image of the batch through a mask.

    .. math:: x^-_i = m_i \\odot x_i + (1 - m_i) \\odot x_{j(i)}, \\quad j(i) \\ne i

    with :math:`m_i` from :func:`blur_masks` and :math:`j` from :func:`partner_index`.
    Every pixel is copied from one of the two images, never averaged.

    Args:
        x: flattened images, shape ``(B, D)`` with ``D = H * W``, ``B >= 2``.
        image_shape: ``(H, W)``.
        blurs: rounds of blurring of the mask.
        generator: random source, on the device of ``x``.

    Returns:
        Tensor of shape ``(B, D)``, dtype of ``x``.
    """
    B, D = x.shape
    H, W = image_shape
    if H * W != D:
        raise ValueError(f"image shape {H}x{W} does not fit {D} features per image")

    j = partner_index(B, generator=generator, device=x.device)  # (B,)
    m = blur_masks(B, image_shape, blurs, generator=generator, device=x.device)
    return torch.where(m.view(B, D), x, x[j])  # (B, D)


def sample_wrong_labels(
    logits: Tensor, y: Tensor, *, generator: torch.Generator | None = None
) -> Tensor:
    """A wrong label per row, drawn in proportion to the model's probabilities of it.

    .. math::

        P(y^- = c) = \\frac{p_c}{1 - p_y} \\;(c \\ne y), \\quad P(y^- = y) = 0,
        \\qquad p = \\operatorname{softmax}(z)

    Computed as the softmax of the logits with the true label's set to :math:`-\\infty`,
    which equals the ratio above and stays finite even when :math:`p_y` rounds to 1.

    Args:
        logits: the model's class scores ``z``, shape ``(B, C)``; any finite values.
        y: true labels, shape ``(B,)``, int64.
        generator: random source, on the device of ``logits``.

    Returns:
        int64 tensor of shape ``(B,)``, never equal to ``y``.
    """
    z = logits.float().scatter(1, y[:, None], float("-inf"))  # (B, C)
    p = torch.softmax(z, dim=1)  # (B, C), zero at the true label
    return torch.multinomial(p, 1, generator=generator).squeeze(1)  # (B,)
