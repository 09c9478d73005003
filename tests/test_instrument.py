"""Lesson 06's instrument: the FID floor, KID and the rule for when two numbers differ."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from conftest import expect_clear_error
from diffcourse.core import compare, mean_se
from diffcourse.metrics import FID_N, fid_floor, kid, kid_features


def test_fid_floor_is_seeded_and_has_its_draws():
    a = fid_floor(200, draws=5)
    b = fid_floor(200, draws=5)
    assert a['values'] == b['values'] and len(a['values']) == 5
    assert a['std'] == pytest.approx(np.std(a['values'], ddof=1))
    assert fid_floor(200, draws=5, seed=1)['values'] != a['values']


def test_fid_floor_falls_with_n():  # eq. (3): the bias c / N
    assert compare(fid_floor(FID_N)['values'], fid_floor(100)['values']).verdict == 'a < b'


def test_kid_features_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64)
    y = torch.randn(5, 3, generator=g, dtype=torch.float64)

    def k(a, b):
        return (float(a @ b) / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / 42
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(5)) / 35
    # float64: ~100 kernel values of order 1 with ~10 roundings (2.2e-16) each -> ~1e-13; 1e-11 allowed
    assert abs(kid_features(x, y) - (xx + yy - 2 * xy)) < 1e-11


def test_kid_of_images_is_finite_and_orders_blur():
    from diffcourse.metrics import classifier_data

    x, _ = classifier_data('digits', 'train')
    noise = torch.rand(200, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert kid(x[:200]) < kid(noise)


def test_compare_follows_welch():
    a = [1.0, 1.2, 0.8, 1.1]
    b = [1.5, 1.9, 1.4]
    c = compare(a, b)
    (ma, sa), (mb, sb) = mean_se(a), mean_se(b)
    ref = scipy.stats.ttest_ind(b, a, equal_var=False)  # Welch's test: the same df, the same verdict
    assert (c.lo > 0 or c.hi < 0) == (ref.pvalue < 0.05)
    assert (c.lo + c.hi) / 2 == pytest.approx(mb - ma)
    assert c.hi - c.lo > 2 * 1.96 * math.hypot(sa, sb)  # t is wider than the normal with few values
    assert compare([1.0, 1.0], [1.0, 1.0]).verdict == 'cannot be told apart'


BAD = [
    (lambda: fid_floor(0), ValueError, 'n must be an integer >= 2, got 0'),
    (lambda: fid_floor(10, draws=1), ValueError, 'draws must be an integer >= 2, got 1'),
    (lambda: fid_floor(10, classifier='cifar'), ValueError, "Unknown classifier 'cifar'"),
    (lambda: mean_se([1.0]), ValueError, 'at least 2 finite values'),
    (lambda: mean_se([1.0, float('nan')]), ValueError, 'at least 2 finite values'),
    (lambda: compare([1.0, 2.0], [1.0, 2.0], level=1.0), ValueError, 'level must be'),
    (lambda: compare([1.0], [1.0, 2.0]), ValueError, 'at least 2 finite values'),
]


@pytest.mark.parametrize('call,err,words', BAD)
def test_bad_input(call, err, words):
    expect_clear_error(call, err, words)
