"""The multi-task imaging network: shared encoder, U-Net decoder, classifier, embedding, CAM.

Shapes use ``B`` batch, ``S`` image side (64 served), ``C_i`` encoder widths,
``E`` embedding width (the deterioration model's ``image_dim``, 64) and ``s = S / 2^D``
the bottleneck side after ``D`` poolings.

* Encoder: ``D`` levels of two ``3x3 conv -> GroupNorm -> ReLU`` with widths
  ``base * 2^i``, each followed by 2x2 max pooling, then a bottleneck block of width
  ``E``: ``A [B,E,s,s]``.
* Decoder (U-Net): per level, 2x2 transposed convolution, concatenation with the
  encoder's skip features, a block (the finest one without its final ReLU, so the head
  sees signed features); a ``1x1`` convolution gives the lesion logit per pixel,
  ``mask_probability [B,1,S,S]``.
* Embedding: global average pooling of ``A``, ``embedding [B,E]``. It is what the
  deterioration model's cross-modal attention takes (``image_embeddings [K,E]``).
* Classification: ``logit = w · embedding + b``, ``class_probability [B,1] =
  sigmoid(a · logit + c)`` with the Platt calibration ``(a, c)`` (buffer
  ``calibration``, fitted on held-back X-rays; abnormality present: a lung tumour on a
  CT patch, pneumonia on an X-ray).
* CAM (Zhou et al. 2016): ``ReLU(Σ_c w_c A_c)`` upsampled bilinearly to ``S x S`` and
  divided by its maximum per image (zeros when nothing is positive). With a linear head
  on a global average pool, Grad-CAM's channel weights are ``w_c / s²`` (the same for
  every position), so Grad-CAM on ``A`` equals this CAM up to a positive factor, which the
  normalisation removes; :func:`grad_cam` computes it by autograd and a test checks it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias
from torch import Tensor, nn

__all__ = ["ImagingConfig", "ImagingNet", "grad_cam"]


@dataclass(frozen=True, slots=True)
class ImagingConfig:
    """Network hyper-parameters.

    Attributes:
        image_size: ``S``, side of the square input (divisible by ``2^depth``).
        base_channels: Width of the first encoder level.
        depth: ``D``, poolings.
        embedding_dim: ``E``, bottleneck width and embedding size.
        decoder_dropout: Channel dropout on each decoder level's input (training only;
            the served model in eval mode is unaffected).
        flip_average: ``forward`` returns the lesion probability averaged over the image
            and its left-right mirror (test-time augmentation; the other outputs come from
            the image alone). Training never uses ``forward``; the trainer switches this on
            after choosing the epoch (``--flip-average``, issue 17's fifth round).
    """

    image_size: int = 64
    base_channels: int = 8
    depth: int = 3
    embedding_dim: int = 64
    decoder_dropout: float = 0.0
    flip_average: bool = False

    def __post_init__(self) -> None:
        if self.depth < 1 or self.base_channels < 1 or self.embedding_dim < 1:
            raise ValueError("depth, base_channels and embedding_dim must be positive")
        if not 0.0 <= self.decoder_dropout < 1.0:
            raise ValueError("decoder_dropout must be in [0, 1)")
        if self.image_size % (2**self.depth):
            raise ValueError("image_size must be divisible by 2 ** depth")

    def to_dict(self) -> dict[str, int | float | bool]:
        """The configuration as plain JSON-ready values."""
        return asdict(self)


def _groups(channels: int) -> int:
    return 4 if channels % 4 == 0 else 1


class _Block(nn.Sequential):
    """Two ``3x3 conv -> GroupNorm -> ReLU``: ``[B,c_in,h,w] -> [B,c_out,h,w]``.

    With ``final_relu=False`` the last ReLU is left out, so the block's output is signed
    (used before the segmentation head, see :class:`ImagingNet`).
    """

    def __init__(self, c_in: int, c_out: int, *, final_relu: bool = True) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.GroupNorm(_groups(c_out), c_out),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
            nn.GroupNorm(_groups(c_out), c_out),
        ]
        if final_relu:
            layers.append(nn.ReLU())
        super().__init__(*layers)


class _Up(nn.Module):
    """Upsample ``[B,c_in,h,w]`` to ``[B,c_skip,2h,2w]``, concatenate the skip, block."""

    def __init__(
        self, c_in: int, c_skip: int, *, final_relu: bool = True, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_skip, 2, stride=2)
        # No parameters, so checkpoints are the same with or without it.
        self.dropout = nn.Dropout2d(dropout)
        self.block = _Block(2 * c_skip, c_skip, final_relu=final_relu)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        out: Tensor = self.block(self.dropout(torch.cat([self.up(x), skip], dim=1)))
        return out


class ImagingNet(nn.Module):
    """Multi-task U-Net: segmentation, classification, embedding and CAM from one image.

    Args:
        config: Hyper-parameters.
    """

    def __init__(self, config: ImagingConfig) -> None:
        super().__init__()
        widths = [config.base_channels * 2**i for i in range(config.depth)]
        self.image_size = config.image_size
        self.flip_average = config.flip_average
        self.downs = nn.ModuleList(
            _Block(c_in, c_out) for c_in, c_out in zip([1, *widths[:-1]], widths, strict=True)
        )
        self.bottleneck = _Block(widths[-1], config.embedding_dim)
        ups = [config.embedding_dim, *widths[::-1]]
        # The finest decoder block ends without ReLU: a 1x1 head on non-negative features
        # can only lower the logit below its bias wherever its weights are negative, and a
        # channel that dies (zero everywhere) can never raise it; that capped the shipped
        # model at sigmoid(bias) = 0.6534 (issue 17). Signed features remove the ceiling.
        self.ups = nn.ModuleList(
            _Up(
                ups[i],
                ups[i + 1],
                final_relu=i < config.depth - 1,
                dropout=config.decoder_dropout,
            )
            for i in range(config.depth)
        )
        self.segment = nn.Conv2d(widths[0], 1, 1)
        self.classifier = nn.Linear(config.embedding_dim, 1)
        # Platt calibration of the class logit, fitted after training on held-back X-rays
        # (identity until then): class_probability = sigmoid(scale * logit + offset).
        self.register_buffer("calibration", torch.tensor([1.0, 0.0]))

    def encode(self, image: Tensor) -> tuple[list[Tensor], Tensor]:
        """Skip features per level (finest first) and bottleneck ``A [B,E,s,s]``."""
        skips: list[Tensor] = []
        x = image
        for down in self.downs:
            x = down(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        return skips, self.bottleneck(x)

    def decode(self, skips: list[Tensor], features: Tensor) -> Tensor:
        """Lesion logits ``[B,1,S,S]`` from :meth:`encode`'s outputs."""
        x = features
        n = len(skips)
        for i, up in enumerate(self.ups):
            x = up(x, skips[n - 1 - i])
        logit: Tensor = self.segment(x)
        return logit

    def classify(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``embedding [B,E]`` and class logit ``[B]`` from ``A``."""
        embedding = features.mean(dim=(2, 3))
        return embedding, self.classifier(embedding).squeeze(1)

    def cam(self, features: Tensor) -> Tensor:
        """Class activation map ``[B,1,S,S]`` in ``[0, 1]`` from ``A``."""
        weights = self.classifier.weight.view(1, -1, 1, 1)
        raw = torch.relu((features * weights).sum(dim=1, keepdim=True))
        up = F.interpolate(
            raw, size=[self.image_size, self.image_size], mode="bilinear", align_corners=False
        )
        peak = up.amax(dim=(2, 3), keepdim=True)
        return torch.where(peak > 0, up / torch.clamp(peak, min=1e-12), torch.zeros_like(up))

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Serves a batch.

        Args:
            image: ``[B,1,S,S]`` preprocessed images in ``[0, 1]``.

        Returns:
            ``mask_probability [B,1,S,S]``, ``class_probability [B,1]``,
            ``embedding [B,E]`` and ``cam [B,1,S,S]``.
        """
        skips, features = self.encode(image)
        mask = torch.sigmoid(self.decode(skips, features))
        if self.flip_average:
            mirrored = torch.flip(image, [3])
            mirror_skips, mirror_features = self.encode(mirrored)
            mirror_mask = torch.sigmoid(self.decode(mirror_skips, mirror_features))
            mask = 0.5 * (mask + torch.flip(mirror_mask, [3]))
        embedding, logit = self.classify(features)
        calibration: Tensor = self.calibration  # type: ignore[assignment]
        calibrated = calibration[0] * logit + calibration[1]
        return (
            mask,
            torch.sigmoid(calibrated).unsqueeze(1),
            embedding,
            self.cam(features),
        )


def grad_cam(net: ImagingNet, image: Tensor) -> Tensor:
    """Grad-CAM of the class logit on the bottleneck, by autograd (reference for tests).

    Args:
        net: The network (its mode is left as it is).
        image: ``[B,1,S,S]``.

    Returns:
        ``[B,1,S,S]`` in ``[0, 1]``: ``ReLU(Σ_c α_c A_c)`` with ``α_c`` the spatial mean of
        ``∂logit/∂A_c``, upsampled and divided by its maximum.
    """
    _, features = net.encode(image)
    features = features.detach().requires_grad_(True)
    _, logit = net.classify(features)
    (gradient,) = torch.autograd.grad(logit.sum(), features)
    alpha = gradient.mean(dim=(2, 3), keepdim=True)
    raw = torch.relu((alpha * features).sum(dim=1, keepdim=True)).detach()
    up = F.interpolate(raw, size=list(image.shape[2:]), mode="bilinear", align_corners=False)
    peak = up.amax(dim=(2, 3), keepdim=True)
    return torch.where(peak > 0, up / torch.clamp(peak, min=1e-12), torch.zeros_like(up))
