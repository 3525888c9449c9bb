"""Resize rule, windows, stitching, Gaussian window, synonym merging, DINO input (SPEC A, B.5, E.5)."""

import numpy as np
import torch

from fiftyone_cass.core.gaussian import gaussian_window
from fiftyone_cass.core.presence import labels_from_probabilities, merge_synonyms
from fiftyone_cass.models.vocabulary import queries_from_class_lines
from fiftyone_cass.core.windows import keep_ratio_size, sliding_windows, stitch_windows, window_starts
from fiftyone_cass.models.dino import dino_pixels_from_clip
from fiftyone_cass.core.preprocess import clip_normalize


def test_keep_ratio_size():
    assert keep_ratio_size(375, 500, 2048, 336) == (336, 448)
    assert keep_ratio_size(1024, 2048, 2048, 560) == (560, 1120)  # Cityscapes (A.1)
    assert keep_ratio_size(20, 10000, 2048, 336) == (4, 2048)  # long side binds
    assert keep_ratio_size(480, 640, 2048, 336) == (336, 448)


def test_windows():
    # n = max(L - 224 + 111, 0)//112 + 1; last window flush with the border
    assert window_starts(336, 224, 112) == [(0, 224), (112, 336)]
    assert window_starts(448, 224, 112) == [(0, 224), (112, 336), (224, 448)]
    assert window_starts(500, 224, 112) == [(0, 224), (112, 336), (224, 448), (276, 500)]
    assert window_starts(224, 224, 112) == [(0, 224)]
    w = sliding_windows(336, 448, 224, 112)
    assert len(w) == 6 and w[0] == (0, 224, 0, 224) and w[-1] == (112, 336, 224, 448)


def test_stitch_averages_overlaps():
    windows = sliding_windows(336, 448, 224, 112)
    logits = torch.stack([torch.full((2, 14, 14), float(i)) for i in range(len(windows))])
    canvas = stitch_windows(logits, windows, (336, 448))
    assert canvas.shape == (2, 336, 448)
    assert canvas[0, 0, 0] == 0  # only window 0
    assert canvas[0, 150, 150] == np.mean([0, 1, 3, 4])  # four windows overlap there
    assert canvas[0, 335, 447] == 5


def test_gaussian_window():
    om = gaussian_window(3, 4, 5.0)
    assert om.shape == (12, 12)
    assert torch.allclose(om.diagonal(), torch.ones(12))
    # patch (0,0) vs (2,3): d^2 = 4 + 9
    assert torch.isclose(om[0, 11], torch.exp(torch.tensor(-13 / 50.0)))
    assert torch.equal(om, om.T)


def test_merge_synonyms_and_threshold():
    lines = ["sky, wall", "dog", "person, person in shirt"]
    queries, owner = queries_from_class_lines(lines)
    assert queries == ["sky", "wall", "dog", "person", "person in shirt"]
    probs = torch.tensor([0.1, 0.3, 0.05, 0.2, 0.35]).view(5, 1, 1)
    cls = merge_synonyms(probs, torch.tensor(owner), 3, dim=0)
    assert torch.allclose(cls.flatten(), torch.tensor([0.3, 0.05, 0.35]))
    assert labels_from_probabilities(cls, 0.1).item() == 2
    assert labels_from_probabilities(cls, 0.4).item() == 0  # below prob_thd -> background


def test_dino_input_reference_quirk():
    """A.6: the faithful path reproduces the reference's typo'd un-normalisation + uint8 truncation;
    the clean path recovers ImageNet normalisation of the true pixels."""
    rgb = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    z = clip_normalize(rgb)
    faithful = dino_pixels_from_clip(z)
    u = z * torch.tensor([0.229, 0.224, 0.255]).view(1, 3, 1, 1) + torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    pix = np.floor((u * 255).numpy()).astype(np.uint8)
    ref = (torch.from_numpy(pix).float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(faithful, ref, atol=1e-5)
    clean = dino_pixels_from_clip(z, clean=True)
    want = (rgb.float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert (clean - want).abs().max() < 0.02  # uint8 round trip
    assert (faithful - want).abs().max() > 0.1  # the quirk is real
    # non-square crops are PIL-resized to a min-side square
    assert dino_pixels_from_clip(clip_normalize(torch.randint(0, 256, (2, 3, 24, 40), dtype=torch.uint8))).shape == (2, 3, 24, 24)
