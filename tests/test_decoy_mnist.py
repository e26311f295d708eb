"""Decoy-MNIST (issue 30): the construction against a transcription of the reference's ``augment``
(``dtak/rrr``, ``rrr/decoy_mnist.py``), draw order included, and the environments built from it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from domainbed_align.data import DecoyMNIST, DecoyMNISTFull
from domainbed_align.data.decoy_mnist import decoy_level, decoy_split


# --- a transcription of the reference (rrr/decoy_mnist.py at 43e8b91), numpy's global generator and all --------
def _reference_bern(p):
    return np.random.rand() < p


def _reference_augment(image, digit, randomize=False, mult=25, all_digits=range(10)):
    if randomize:
        return _reference_augment(image, np.random.choice(all_digits))
    img = image.copy()
    expl = np.zeros_like(img)
    fwd = [0, 1, 2, 3]
    rev = [-1, -2, -3, -4]
    dir1 = fwd if _reference_bern(0.5) else rev
    dir2 = fwd if _reference_bern(0.5) else rev
    for i in dir1:
        for j in dir2:
            img[i][j] = 255 - mult * digit
            expl[i][j] = 1
    return img.ravel(), expl.astype(bool).ravel()


def _reference_split(images, labels, randomize, seed):
    """The reference's loop over one split (``_generate_dataset``), the global generator seeded."""
    np.random.seed(seed)
    all_digits = list(set(labels.tolist()))
    pairs = [_reference_augment(image, digit, all_digits=all_digits, randomize=randomize)
             for image, digit in zip(images, labels)]
    return np.stack([x for x, _ in pairs]).reshape(images.shape), np.stack([e for _, e in pairs]).reshape(images.shape)


def _digits(n, seed=0):
    rng = np.random.RandomState(seed)
    images = (rng.rand(n, 28, 28) * 255 * (rng.rand(n, 28, 28) < 0.2)).astype(np.uint8)
    return images, rng.randint(0, 10, n).astype(np.int64)


@pytest.mark.parametrize("randomize", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_decoy_split_is_the_references_augment_draw_for_draw(randomize, seed):
    images, labels = _digits(300, seed)
    expected_images, expected_patches = _reference_split(images, labels, randomize, seed)
    got_images, got_patches, digits = decoy_split(images, labels, randomize, np.random.RandomState(seed))
    assert np.array_equal(got_images, expected_images) and np.array_equal(got_patches, expected_patches)
    if not randomize:
        assert np.array_equal(digits, labels)
    # every corner occurs, and the level encodes the patch digit
    corners = {(bool(p[0, 0]), bool(p[0, -1]), bool(p[-1, 0]), bool(p[-1, -1])) for p in got_patches}
    assert len(corners) == 4 and all(sum(c) == 1 for c in corners)
    for image, patch, digit in zip(got_images, got_patches, digits):
        assert patch.sum() == 16 and set(image[patch].tolist()) == {decoy_level(digit)}


def test_a_different_draw_order_fails_the_transcription():
    """The oracle can fail: columns drawn before rows (or the random digit after the corner) give other images."""
    images, labels = _digits(200)
    expected, _ = _reference_split(images, labels, True, 0)
    rng = np.random.RandomState(0)
    swapped = []
    for image in images:
        rows_first, cols = rng.rand() < 0.5, rng.rand() < 0.5  # corner first, then the digit: the wrong order
        digit = rng.choice(10)
        out = image.copy()
        out[np.ix_([0, 1, 2, 3] if rows_first else [-1, -2, -3, -4], [0, 1, 2, 3] if cols else [-1, -2, -3, -4])] = \
            decoy_level(digit)
        swapped.append(out)
    assert not np.array_equal(np.stack(swapped), expected)


ANNOTATED = {"gt_masks": True, "annotation_method": True}


def test_environments_training_rule_then_test_rule_disjoint_digits(data_dir):
    dataset = DecoyMNIST(str(data_dir), [2], {})
    assert dataset.ENVIRONMENTS == ["decoy_a", "decoy_b", "randomized"] and dataset.input_shape == (1, 28, 28)
    train_a, train_b, randomized = dataset.datasets
    assert [len(e) for e in dataset.datasets] == [2000, 2000, 2000]
    assert np.array_equal(train_a.decoy_digits, train_a.labels) and np.array_equal(train_b.decoy_digits, train_b.labels)
    agreement = (randomized.decoy_digits == randomized.labels).mean()
    assert 0.07 < agreement < 0.13  # a random digit's level: the label's one time in ten
    indices = [set(e.digit_index.tolist()) for e in dataset.datasets]
    assert not indices[0] & indices[1] and max(indices[0] | indices[1]) < 60000 <= min(indices[2])  # train / t10k
    x, y = train_a[5]
    assert x.shape == (1, 28, 28) and 0.0 <= x.min() and x.max() <= 1.0 and y == train_a.labels[5]
    patch = train_a.decoy(5)[0].bool()
    assert torch.allclose(x[0][patch], torch.tensor(decoy_level(y) / 255.0))
    assert not (train_a.mask(5)[0].bool() & patch).any() and train_a.mask(5).sum() > 20  # strokes, never the patch
    again = DecoyMNIST(str(data_dir), [2], {})  # deterministic
    assert torch.equal(again[2].images, randomized.images)


def test_the_annotation_marks_the_patch_irrelevant_for_annotation_methods_only(data_dir):
    plain = DecoyMNIST(str(data_dir), [2], {"gt_masks": True})  # not an annotation method's run: no channel
    assert plain.input_shape == (1, 28, 28) and plain[0][0][0].shape == (1, 28, 28)
    annotated = DecoyMNIST(str(data_dir), [2], ANNOTATED)
    assert tuple(annotated.input_shape) == (2, 28, 28)
    x, _ = annotated[1][3]
    assert torch.equal(x[1], 1.0 - annotated[1].decoy(3)[0])  # RRR's A = 1 - annotation = the patch exactly
    assert torch.equal(x[:1], plain[1][3][0])


def test_full_size_is_the_references_split(data_dir):
    full = DecoyMNISTFull(str(data_dir), [2], {})
    assert [len(e) for e in full.datasets] == [30000, 30000, 10000]
