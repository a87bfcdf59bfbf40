"""The training and test pipelines of UperNet on ADE20K (CARAFE supplement §1; CSAIL's ``dataset.py``).

Training (per batch, as CSAIL builds each GPU's batch): one short side drawn from
``short_sides`` for the whole batch (the paper: {300, 375, 450, 525, 600}), each image scaled so
its short side reaches it without the long side passing ``max_long_side`` (1200), a random
horizontal flip, then image and label padded bottom/right to the batch's largest size rounded
up to a multiple of ``size_divisor`` (32). Padding is 0 in the normalised image (CSAIL pads
after normalising) and ``IGNORE_INDEX`` in the label. Images resize bilinearly, labels by
nearest neighbour, both with PIL itself, as CSAIL's ``imresize`` does.

The pinned CSAIL code for resizing and label subsampling is its PIL-based ``dataset.py`` as released
in ``mit-semseg==1.0.0`` (the package the equivalence tests import), followed throughout. One
difference is kept on purpose: there the batch padding of the label is class 0 (the labels are
shifted by −1 before being placed into a zero tensor), which trains "wall" on padding; here it is
ignored, as CSAIL's earlier code did (it shifted after padding).

Test: the short side goes to ``short_side`` (450) with the long side at most ``max_long_side``,
then each side is rounded *up* to a multiple of 32 by resizing (CSAIL's ``round2nearest_multiple``:
the image is stretched by a few pixels, not padded); the label stays at its original size,
where the prediction is resized back to.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

# Label value of "other / unlabelled" pixels after ADE20K's 0 is mapped out (mmseg's convention).
IGNORE_INDEX = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Input normalisations: mean_std (RGB in [0, 1], data.mean / data.std: torchvision's ImageNet ones by
# default, and CSAIL's since it moved to PIL, mit_semseg 1.0.0 dataset.py); csail_bgr (CSAIL's earlier
# cv2 code and its own ImageNet ResNets: BGR, 0-255, minus the mean, std 1; dataset.py at
# CSAILVision/semantic-segmentation-pytorch@1b8371a3d2af85ff340ba42b3774f59005f411d3, BaseDataset).
NORMALIZATIONS = ("mean_std", "csail_bgr")
CSAIL_BGR_MEAN = (102.9801, 115.9465, 122.7717)


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= ``value``."""
    return ((int(value) - 1) // multiple + 1) * multiple


def scaled_size(height: int, width: int, short_side: int, max_long_side: int) -> tuple[int, int]:
    """Size with the short side at ``short_side`` unless the long side would pass ``max_long_side``.

    Truncated to ints as CSAIL does (``int(h * scale)``), and never below one pixel.
    """
    scale = min(short_side / min(height, width), max_long_side / max(height, width))
    return max(int(height * scale), 1), max(int(width * scale), 1)


def normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float],
              normalization: str = "mean_std") -> torch.Tensor:
    """uint8 RGB (3, H, W) → float: scaled to [0, 1] and normalised per channel with ``mean`` / ``std``
    (``mean_std``), or as CSAIL's BGR networks take it (``csail_bgr``: BGR, 0–255, minus CSAIL_BGR_MEAN)."""
    if normalization == "csail_bgr":
        return image.flip(0).float() - torch.tensor(CSAIL_BGR_MEAN)[:, None, None]
    if normalization != "mean_std":
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    return TF.normalize(image.float().div_(255.0), list(mean), list(std))


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PIL's bilinear resize of a uint8 (3, H, W) image (antialiased when shrinking), as CSAIL's ``imresize``."""
    if tuple(image.shape[-2:]) == size:
        return image
    pil = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    resized = np.asarray(pil.resize((int(size[1]), int(size[0])), Image.BILINEAR))
    return torch.from_numpy(resized.copy()).permute(2, 0, 1)


def resize_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PIL's nearest-neighbour resize of a uint8 (H, W) label map (the centre pixel), as CSAIL's ``imresize``."""
    if tuple(label.shape[-2:]) == size:
        return label
    resized = np.asarray(Image.fromarray(label.contiguous().numpy()).resize((int(size[1]), int(size[0])),
                                                                          Image.NEAREST))
    return torch.from_numpy(resized.copy())


class TrainBatch:
    """Collate function of the training loader: one random scale per batch, flip, pad to 32."""

    def __init__(self, short_sides: Sequence[int], max_long_side: int, flip_prob: float = 0.5,
                 size_divisor: int = 32, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, normalization: str = "mean_std") -> None:
        self.short_sides = [int(s) for s in short_sides]
        self.max_long_side = int(max_long_side)
        self.flip_prob = float(flip_prob)
        self.size_divisor = int(size_divisor)
        self.mean, self.std = tuple(mean), tuple(std)
        self.normalization = normalization

    def __call__(self, samples: Sequence[tuple[torch.Tensor, torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        # torch's RNG: seeded per DataLoader worker (and by seed_everything in the main process).
        short_side = self.short_sides[int(torch.randint(len(self.short_sides), ()))]
        images, labels = [], []
        for image, label, _ in samples:
            size = scaled_size(image.shape[-2], image.shape[-1], short_side, self.max_long_side)
            image, label = resize_image(image, size), resize_label(label, size)
            if float(torch.rand(())) < self.flip_prob:
                image, label = image.flip(-1), label.flip(-1)
            images.append(normalize(image, self.mean, self.std, self.normalization))
            labels.append(label)
        height = round_up(max(i.shape[-2] for i in images), self.size_divisor)
        width = round_up(max(i.shape[-1] for i in images), self.size_divisor)
        batch_images = torch.stack([F.pad(i, (0, width - i.shape[-1], 0, height - i.shape[-2]), value=0.0)
                                    for i in images])
        batch_labels = torch.stack([F.pad(lab, (0, width - lab.shape[-1], 0, height - lab.shape[-2]),
                                          value=IGNORE_INDEX) for lab in labels])
        return batch_images, batch_labels


class EvalTransform:
    """Resize to the test scale, rounded up to a multiple of 32 by resizing; the label is left as is."""

    def __init__(self, short_side: int, max_long_side: int, size_divisor: int = 32,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 normalization: str = "mean_std") -> None:
        self.short_side = int(short_side)
        self.max_long_side = int(max_long_side)
        self.size_divisor = int(size_divisor)
        self.mean, self.std = tuple(mean), tuple(std)
        self.normalization = normalization

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = scaled_size(image.shape[-2], image.shape[-1], self.short_side, self.max_long_side)
        size = (round_up(height, self.size_divisor), round_up(width, self.size_divisor))
        return normalize(resize_image(image, size), self.mean, self.std, self.normalization)


def collate_eval(samples: Sequence[tuple[torch.Tensor, torch.Tensor, int]]) -> tuple[list[torch.Tensor],
                                                                                       list[torch.Tensor], list[int]]:
    """Evaluation images keep their own sizes: lists of images, full-size labels and dataset indices."""
    images, labels, indices = zip(*samples) if samples else ((), (), ())
    return list(images), list(labels), [int(i) for i in indices]


__all__ = ["CSAIL_BGR_MEAN", "IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD", "NORMALIZATIONS", "EvalTransform", "TrainBatch", "collate_eval",
           "normalize", "resize_image", "resize_label", "round_up", "scaled_size"]
