import json
import numpy as np, pytest, scipy.linalg, scipy.stats, torch
from diffcourse.core import weights_path, load_safetensors
from diffcourse.metrics import (
    frechet_distance,
    feature_stats,
    sqrtm_psd,
    SmallCNN,
    random_shift,
    load_classifier,
    classifier_data,
    classifier_features,
    classifier_accuracy,
    train_classifier,
    fid,
    sliced_wasserstein,
    wasserstein_1d,
    CLASSIFIERS,
    FID_N,
)


def scipy_fd(mu1, s1, mu2, s2):
    "Independent reference: eq. (1) with scipy's general matrix square root."
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_distance_matches_scipy_and_is_symmetric():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 12)) @ rng.normal(size=(12, 12))
    b = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12)) + 0.5
    sa, sb = (a.mean(0), np.cov(a, rowvar=False)), (b.mean(0), np.cov(b, rowvar=False))
    d = frechet_distance(*sa, *sb)
    # float64 throughout: d = 65 is a difference of traces summing to 282, eigen-solvers err by ~1e-13 of that: 1e-9
    assert d == pytest.approx(scipy_fd(*sa, *sb), rel=1e-9)
    assert d == pytest.approx(frechet_distance(*sb, *sa), rel=1e-9)


def test_frechet_distance_closed_form_for_diagonal_covariances():
    v1, v2 = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 0.0])  # a singular covariance on purpose
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    want = ((mu1 - mu2) ** 2).sum() + ((v1.sqrt() - v2.sqrt()) ** 2).sum()
    # diagonal float64 matrices: eigh is exact up to ~1e-16 x 10; the float32 inputs are exact small integers: 1e-10
    assert frechet_distance(mu1, torch.diag(v1), mu2, torch.diag(v2)) == pytest.approx(want.item(), abs=1e-10)


def test_frechet_distance_is_zero_for_a_rank_deficient_set_against_itself():
    f = torch.randn(20, 64, generator=torch.Generator().manual_seed(0)).float()  # N < D: singular covariance
    mu, sig = feature_stats(f)
    # the 44 zero eigenvalues come out of float64 eigh as ~1e-16 x trace; their clipped square roots add ~44 x 1e-8 x
    # sqrt(trace) at worst: 1e-4 x trace allowed
    assert 0 <= frechet_distance(mu, sig, mu, sig) < 1e-4 * sig.trace().item()


def test_sqrtm_psd_squares_back():
    a = torch.randn(10, 6, dtype=torch.float64)
    s = a.T @ a
    r = sqrtm_psd(s)
    assert torch.allclose(r @ r, s, atol=1e-10, rtol=0)  # float64: ~6 x 2.2e-16 x |s| (< 50) = 7e-14; 1e-10 allowed
    # (V * sqrt(lam)) @ V^T rounds the products of the (i, j) and (j, i) sums differently: ~6 x 1.1e-16 x |r| (< 10)
    torch.testing.assert_close(r, r.mT, atol=1e-12, rtol=0)


def test_frechet_distance_rejects_bad_input():
    with pytest.raises(ValueError, match=r'mu \(D,\) and sigma \(D, D\)'):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match='NaN'):
        frechet_distance(np.array([np.nan, 0]), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match='N >= 2'):
        feature_stats(torch.zeros(1, 4))


def test_shipped_classifiers_are_small_accurate_and_reproducible():
    for name, floor in (('digits', 0.97), ('glyphs', 0.90)):
        path = weights_path(f"{CLASSIFIERS[name]['weights']}.safetensors")
        assert path.stat().st_size < 1_000_000
        _, meta = load_safetensors(path)
        assert meta['command'] == f"python tools/weights.py {CLASSIFIERS[name]['weights']}"
        x, y = classifier_data(name, 'test')
        acc = classifier_accuracy(x, y, name)
        assert acc >= floor, (name, acc)
        # the file records round(acc, 4) of this computation (error 5e-5); float32 logits differ across CPUs by ~1e-6,
        # far below the gap between a digit's top two classes, so no prediction flips: 2e-3 (< one image in 360)
        assert acc == pytest.approx(
            json.loads(meta['info'])['test_accuracy'], abs=2e-3
        )  # the recorded number is the real one
        m = load_classifier(name)
        assert not m.training and not any(p.requires_grad for p in m.parameters())


def test_fid_cross_checked_against_scipy_on_the_same_features():
    x_train, _ = classifier_data('digits', 'train')
    x_test, _ = classifier_data('digits', 'test')
    fake = x_train[:FID_N]
    ff, fr = classifier_features(fake).double().numpy(), classifier_features(x_test).double().numpy()
    want = scipy_fd(ff.mean(0), np.cov(ff, rowvar=False), fr.mean(0), np.cov(fr, rowvar=False))
    # both sides use the same float32 features (same batches, same kernels); float64 eigh against scipy's sqrtm
    # differ by ~1e-12 relative: 1e-6 allowed, and 1e-6 absolute for a set against itself
    assert fid(fake) == pytest.approx(want, rel=1e-6)  # default reference: the test split
    assert fid(fake, x_test) == pytest.approx(want, rel=1e-6)
    assert fid(x_test) == pytest.approx(0.0, abs=1e-6)


def test_fid_orders_real_blurred_and_noise():
    x_train, _ = classifier_data('digits', 'train')
    g = torch.Generator().manual_seed(0)
    real = fid(x_train[:FID_N])
    smooth = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x_train[:FID_N], (1, 1, 1, 1), value=-1.0), 3, 1)
    noise = fid(torch.rand(FID_N, 1, 16, 16, generator=g) * 2 - 1)
    assert real < fid(smooth) < noise


def test_metrics_reject_bad_images():
    x, y = classifier_data('digits', 'test')
    with pytest.raises(ValueError, match=r'\(N, 1, 16, 16\)'):
        fid(x[:, :, :8])
    with pytest.raises(ValueError, match=r'\(N, 1, 16, 16\)'):
        fid(x[:1])
    with pytest.raises(ValueError, match=r'must lie in \[-1, 1\]'):
        fid(x * 127.5 + 127.5)
    with pytest.raises(ValueError, match='NaN'):
        fid(torch.full_like(x, float('nan')))
    with pytest.raises(ValueError, match=r"valid choices are \['digits', 'glyphs'\]"):
        fid(x, classifier='inception')
    with pytest.raises(ValueError, match='pass real_images'):
        fid(x, classifier=SmallCNN())
    with pytest.raises(ValueError, match='labels must have shape'):
        classifier_accuracy(x, y[:3])
    with pytest.warns(UserWarning, match=r'are they in \[0, 1\]'):
        classifier_accuracy((x + 1) / 2, y)


def test_random_shift_moves_whole_images():
    x = torch.randn(6, 1, 16, 16)
    assert torch.equal(random_shift(x, 0), x)
    s = random_shift(x, 2, generator=torch.Generator().manual_seed(0))
    assert s.shape == x.shape
    # the centre 12x12 of each shifted image is a window of the original
    for a, b in zip(x, s):
        assert any(
            torch.equal(b[:, 2:14, 2:14], a[:, 2 - dy : 14 - dy, 2 - dx : 14 - dx])
            for dy in range(-2, 3)
            for dx in range(-2, 3)
        )


def test_brief_classifier_training_with_the_course_loop_lowers_the_loss():
    state = train_classifier('digits', steps=30, progress=False)
    assert np.mean(state.losses[-5:]) < 0.8 * np.mean(state.losses[:5])
    assert isinstance(state.model, SmallCNN) and not state.model.training


def test_wasserstein_1d_matches_scipy_for_unequal_sizes():
    g = torch.Generator().manual_seed(0)
    px, py = (
        torch.randn(4, 37, generator=g, dtype=torch.float64),
        torch.rand(4, 101, generator=g, dtype=torch.float64) * 3,
    )
    ours = wasserstein_1d(px, py, p=1)
    ref = [scipy.stats.wasserstein_distance(a.numpy(), b.numpy()) for a, b in zip(px, py)]
    # float64 sums of 138 terms of size ~3: ~138 x 1.1e-16 x 3 = 5e-14 at worst; 1e-12 allowed
    assert torch.allclose(ours, torch.tensor(ref, dtype=torch.float64), atol=1e-12, rtol=0)


def test_sliced_wasserstein_of_a_translation():
    # moving a cloud by v moves each projection by theta.v, so SW_2^2 = E[(theta.v)^2] = |v|^2 / D
    x = torch.randn(100, 2, generator=torch.Generator().manual_seed(0))
    v = torch.tensor([3.0, 4.0])
    sw = sliced_wasserstein(x, x + v, n_proj=4000, generator=torch.Generator().manual_seed(1))
    assert sw**2 == pytest.approx(25 / 2, rel=0.05)  # 4000 directions: about 1% standard error
    assert sliced_wasserstein(x, x) == 0.0


def test_sliced_wasserstein_is_reproducible_and_checks_shapes():
    x, y = torch.randn(100, 3), torch.randn(80, 3)
    a = sliced_wasserstein(x, y, generator=torch.Generator().manual_seed(0))
    assert a == sliced_wasserstein(x, y, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match='same D'):
        sliced_wasserstein(x, torch.randn(10, 2))


# --- bad input gets a clear error ------------------------------------------------------------------------------------
from diffcourse.core import ARCHITECTURES
from diffcourse.metrics import reference_stats


def test_classifier_and_its_loaders_reject_bad_input():
    with pytest.raises(ValueError, match=r"Unknown classifier 'mnist'; valid choices are \['digits', 'glyphs'\]"):
        load_classifier('mnist')
    with pytest.raises(ValueError, match=r"Unknown classifier 3"):
        load_classifier(3)
    with pytest.raises(ValueError, match=r"Unknown classifier SmallCNN"):
        reference_stats(SmallCNN())
    with pytest.raises(ValueError, match=r'SmallCNN: width must be an integer >= 1, got 0'):
        SmallCNN(width=0)
    with pytest.raises(TypeError, match=r'SmallCNN: num_classes must be an integer >= 1, got 2.5'):
        SmallCNN(num_classes=2.5)
    net = SmallCNN()
    with pytest.raises(ValueError, match=r'SmallCNN wants images of shape \(B, 1, H, W\), got \(2, 3, 16, 16\)'):
        net(torch.randn(2, 3, 16, 16))
    with pytest.raises(TypeError, match=r'SmallCNN wants x of dtype torch.float32 .*got torch.float64'):
        net.features(torch.randn(2, 1, 16, 16).double())
    with pytest.raises(ValueError, match=r'batch_size must be an integer >= 1, got 0'):
        train_classifier('digits', steps=5, batch_size=0)
    with pytest.raises(ValueError, match=r'steps must be an integer >= 1, got 0'):
        train_classifier('digits', steps=0)
    with pytest.raises(ValueError, match=r'max_shift must be an integer >= 0, got -1'):
        random_shift(torch.zeros(2, 1, 4, 4), -1)
    with pytest.raises(ValueError, match=r'random_shift wants images \(B, C, H, W\), got \(4, 4\)'):
        random_shift(torch.zeros(4, 4))
    assert ARCHITECTURES['diffcourse.metrics.SmallCNN'] is SmallCNN


def test_metric_entry_points_reject_bad_input():
    x, y = classifier_data('digits', 'test')
    with pytest.raises(ValueError, match=r'N >= 2 images of shape \(N, 1, 16, 16\)'):
        fid(x[:40], x[:1])  # too few reference images
    with pytest.raises(ValueError, match=r'got \(40, 1, 8, 8\)'):
        fid(x[:40], x[:40, :, :8, :8])  # shapes that do not match
    with pytest.raises(ValueError, match='NaN'):
        fid(x[:40], torch.full_like(x[:40], float('nan')))
    with pytest.raises(ValueError, match=r'batch_size must be an integer >= 1, got 0'):
        classifier_features(x[:4], batch_size=0)
    with pytest.raises(ValueError, match=r'labels must be integer classes in \[0, 10\), got torch.float32'):
        classifier_accuracy(x[:4], y[:4].float())
    with pytest.raises(ValueError, match=r'integer classes in \[0, 10\), got torch.int64 values from 0 to 12'):
        classifier_accuracy(x[:4], torch.tensor([0, 1, 2, 12]))
    with pytest.raises(ValueError, match=r'labels must be integer classes .* from -1'):
        classifier_accuracy(x[:4], torch.tensor([0, 1, 2, -1]))
    with pytest.raises(ValueError, match='features contains NaN'):
        feature_stats(torch.tensor([[0.0, 1.0], [float('nan'), 0.0]]))
    with pytest.raises(ValueError, match='sigma2 contains NaN'):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.full((2, 2), np.nan))


def test_sliced_wasserstein_rejects_bad_input():
    x = torch.randn(50, 2)
    with pytest.raises(ValueError, match='x or y contains NaN or inf values'):
        sliced_wasserstein(x, torch.full((20, 2), float('nan')))
    with pytest.raises(ValueError, match='contains NaN or inf'):
        sliced_wasserstein(x.clone().index_fill_(0, torch.tensor([3]), float('inf')), x)
    with pytest.raises(ValueError, match=r'N >= 1 and M >= 1, got \(50, 2\) and \(0, 2\)'):
        sliced_wasserstein(x, torch.zeros(0, 2))
    with pytest.raises(ValueError, match=r'the same D, .* got \(50,\) and \(50, 2\)'):
        sliced_wasserstein(x[:, 0], x)
    with pytest.raises(TypeError, match='wants x and y as tensors, got ndarray and Tensor'):
        sliced_wasserstein(x.numpy(), x)
    with pytest.raises(ValueError, match=r'n_proj must be an integer >= 1, got 0'):
        sliced_wasserstein(x, x, n_proj=0)
    with pytest.raises(ValueError, match=r'p must be a finite number >= 1, got 0.5'):
        sliced_wasserstein(x, x, p=0.5)
    assert sliced_wasserstein(x, x.long().float(), n_proj=4, generator=torch.Generator().manual_seed(0)) > 0
