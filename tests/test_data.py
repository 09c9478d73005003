import contextlib, gzip, math, os, socket, threading
import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from diffcourse import data
from diffcourse.data import (
    swiss_roll,
    two_moons,
    GaussianMixture,
    gaussian_mixture,
    TOYS,
    toy_2d,
    load_digits,
    GLYPH_CHARS,
    Glyphs,
    load_glyphs,
    glyph_caption,
    render_glyph,
    load_mnist,
    read_idx,
    write_idx,
    MNIST_FILES,
    DATASETS,
    get_dataloader,
    download_mnist,
    net_timeout,
    is_offline,
)


# ---------- 2-D toys


@pytest.mark.parametrize('name', sorted(TOYS))
def test_toys_shape_scale_and_determinism(name):
    x = toy_2d(name, 20_000, torch.Generator().manual_seed(0))
    assert x.shape == (20_000, 2) and x.dtype == torch.float32
    assert 0.5 < x.std().item() < 1.5 and x.mean(0).abs().max() < 0.5
    assert torch.equal(x, toy_2d(name, 20_000, torch.Generator().manual_seed(0)))
    assert not torch.equal(x, toy_2d(name, 20_000, torch.Generator().manual_seed(1)))


def test_toy_noise_parameter():
    g = lambda: torch.Generator().manual_seed(0)
    assert (swiss_roll(1000, g(), noise=0.2) - swiss_roll(1000, g(), noise=0.0)).std() > 0.15
    assert two_moons(5, g(), noise=0.0).shape == (5, 2)


def test_unknown_toy_lists_valid_names():
    with pytest.raises(
        ValueError,
        match=r"Unknown 2-D toy 'spiral'; valid choices are \['gaussian_mixture', 'swiss_roll', 'two_moons'\]",
    ):
        toy_2d('spiral', 10)


# ---------- Gaussian mixture


def _scipy_log_prob(gm, x):
    p = sum(
        float(w) * multivariate_normal(m.numpy(), S.numpy()).pdf(x) for m, S, w in zip(gm.means, gm.covs, gm.weights)
    )
    return np.log(p)


def test_mixture_log_prob_matches_scipy():
    gm = gaussian_mixture()
    assert gm.K >= 3 and gm.D == 2 and gm.means.dtype == torch.float64
    x = gm.sample(2000, torch.Generator().manual_seed(0))
    assert x.shape == (2000, 2) and x.dtype == torch.float32
    lp = gm.log_prob(x.double())
    assert lp.shape == (2000,)
    # float64 (eps 2.2e-16): ~50 operations on log-densities |lp| < 100 -> 1e-12; scipy takes the log of a sum of
    # densities, exact to a few float64 roundings as well: 1e-9 allowed
    np.testing.assert_allclose(lp.numpy(), _scipy_log_prob(gm, x.double().numpy()), rtol=0, atol=1e-9)


def test_mixture_log_prob_3d_random_params_matches_scipy():
    g = torch.Generator().manual_seed(3)
    A = torch.randn(4, 3, 3, generator=g, dtype=torch.float64)
    gm = GaussianMixture(
        torch.randn(4, 3, generator=g), A @ A.transpose(1, 2) + 0.1 * torch.eye(3), torch.tensor([1.0, 2.0, 3.0, 4.0])
    )
    torch.testing.assert_close(
        gm.weights.sum(), torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-15
    )  # 4 float64 roundings
    x = torch.randn(100, 3, generator=g, dtype=torch.float64) * 2
    np.testing.assert_allclose(gm.log_prob(x).numpy(), _scipy_log_prob(gm, x.numpy()), rtol=0, atol=1e-9)  # as above


def test_mixture_integrates_to_one_monte_carlo():
    gm = gaussian_mixture()
    q = torch.distributions.MultivariateNormal(
        torch.zeros(2, dtype=torch.float64), 4 * torch.eye(2, dtype=torch.float64)
    )
    torch.manual_seed(0)
    xq = q.sample((100_000,))
    r = torch.exp(gm.log_prob(xq) - q.log_prob(xq))
    assert abs(r.mean().item() - 1) < 4 * r.std().item() / math.sqrt(len(r)) + 1e-3


def test_mixture_log_prob_is_finite_far_away_and_keeps_dtype():
    gm = gaussian_mixture()
    far = torch.tensor([[50.0, -50.0]])
    assert torch.isfinite(gm.log_prob(far)).all() and gm.log_prob(far).dtype == torch.float32


def test_mixture_samples_match_moments_and_score_matches_autograd():
    gm = gaussian_mixture()
    x = gm.sample(200_000, torch.Generator().manual_seed(1)).double()
    # Monte Carlo, not rounding: the standard error of a mean of 200,000 draws of std < 1.2 is 1.2 / 447 = 2.7e-3, of
    # a covariance entry (var < 1.4) about sqrt(2) * 1.4 / 447 = 4.4e-3; 0.01 is 2-4 standard errors, and the seed is
    # fixed, so every machine draws the same numbers (up to float64 rounding)
    torch.testing.assert_close(x.mean(0), gm.mean(), atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), gm.cov(), atol=0.01, rtol=0)
    xg = x[:64].clone().requires_grad_()
    (grad,) = torch.autograd.grad(gm.log_prob(xg).sum(), xg)
    # two float64 routes to the same score (|score| < 100, condition number of the covariances (0.25/0.08)^2 = 10):
    # 10 * 100 ops * 2.2e-16 * 100 = 2e-11; 1e-9 allowed
    torch.testing.assert_close(gm.score(x[:64]), grad, atol=1e-9, rtol=1e-9)


def test_noised_mixture_is_the_distribution_of_noised_samples():
    gm = gaussian_mixture()
    g = torch.Generator().manual_seed(2)
    x0 = gm.sample(200_000, g).double()
    xt = 0.6 * x0 + 0.8 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    gmt = gm.noised(0.6, 0.8)  # Monte Carlo again: std < 1.1, standard errors 2.5e-3 (mean) and 3.8e-3 (covariance)
    torch.testing.assert_close(xt.mean(0), gmt.mean(), atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(xt.T), gmt.cov(), atol=0.01, rtol=0)


def test_mixture_rejects_bad_parameters():
    with pytest.raises(ValueError, match='positive definite'):
        GaussianMixture(torch.zeros(1, 2), torch.tensor([[[1.0, 0.0], [0.0, -1.0]]]), torch.ones(1))
    with pytest.raises(ValueError, match=r'covs must have shape \(K, D, D\)'):
        GaussianMixture(torch.zeros(2, 2), torch.eye(2)[None], torch.ones(2))
    with pytest.raises(ValueError, match='positive numbers'):
        GaussianMixture(torch.zeros(2, 2), torch.eye(2).expand(2, 2, 2), torch.tensor([1.0, -1.0]))


# ---------- digits


def test_digits_split_sizes_range_and_stratification():
    xtr, ytr = load_digits('train')
    xte, yte = load_digits('test')
    assert xtr.shape == (1437, 1, 16, 16) and xte.shape == (360, 1, 16, 16)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert xtr.min() >= -1 and xtr.max() <= 1 and xtr.min() == -1 and xtr.max() == 1
    assert xtr[..., :, 0].mean() < -0.99 and xtr.mean() < -0.3  # mostly background (-1), the left edge especially
    assert torch.bincount(yte, minlength=10).min() >= 35
    xa, ya = load_digits('all', size=8)
    assert xa.shape == (1797, 1, 8, 8)
    # the split is fixed and disjoint
    assert torch.equal(load_digits('train')[1], ytr)
    assert len(ytr) + len(yte) == len(ya)


def test_digits_sizes_and_errors():
    assert load_digits('test', size=32)[0].shape == (360, 1, 32, 32)
    with pytest.raises(ValueError, match=r"Unknown digits image size 28; valid choices are \[8, 16, 32\]"):
        load_digits(size=28)
    with pytest.raises(ValueError, match=r"Unknown split 'valid'; valid choices are \['train', 'test', 'all'\]"):
        load_digits('valid')


def test_digits_returned_tensors_are_copies():
    x, _ = load_digits('test', size=8)
    x.fill_(0)
    assert load_digits('test', size=8)[0].min() == -1


# ---------- glyphs


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv('DIFFCOURSE_CACHE', str(tmp_path))
    monkeypatch.setattr(data, '_GLYPHS', {})
    return tmp_path


def test_glyph_captions():
    assert glyph_caption('A', 'serif', 'bold') == 'a bold serif capital A'
    assert glyph_caption('g', 'sans', 'regular', 'italic') == 'an italic sans lowercase g'
    assert glyph_caption('7', 'mono') == 'a mono digit 7'
    assert GLYPH_CHARS == 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'


def test_render_glyph_is_deterministic_and_inked():
    a = render_glyph('W', 'DejaVuSans-Bold.ttf', 16, em=0.95, angle=10, shift=(1, -1))
    assert a.shape == (16, 16) and a.dtype == np.uint8 and a.max() > 200
    assert np.array_equal(a, render_glyph('W', 'DejaVuSans-Bold.ttf', 16, em=0.95, angle=10, shift=(1, -1)))
    assert a[0].max() < 128 or a[-1].max() < 128  # wide glyphs are shrunk to fit


def test_glyphs_deterministic_split_and_cached(cache):
    g = load_glyphs('train', n_per_class=5, seed=3)
    assert isinstance(g, Glyphs)
    assert g.images.shape == (62 * 4, 1, 16, 16) and g.images.dtype == torch.float32 and g.labels.dtype == torch.int64
    assert g.images.min() == -1 and g.images.max() <= 1
    assert len(g.captions) == len(g.attrs) == len(g.labels)
    assert all(GLYPH_CHARS[int(l)] == a['char'] and a['char'] in c for l, a, c in zip(g.labels, g.attrs, g.captions))
    assert {a['family'] for a in g.attrs} == {'serif', 'sans', 'mono'} and {a['weight'] for a in g.attrs} == {
        'regular',
        'bold',
    }
    files = list(cache.glob('glyphs-*.npz'))
    assert len(files) == 1 and not list(cache.glob('.*.tmp'))
    t = load_glyphs('test', n_per_class=5, seed=3)
    assert len(t.labels) == 62 and torch.equal(torch.bincount(t.labels), torch.ones(62, dtype=torch.int64))
    # from disk (memory cache cleared) gives the same data; regenerating from scratch too
    data._GLYPHS.clear()
    g2 = load_glyphs('train', n_per_class=5, seed=3)
    assert torch.equal(g.images, g2.images) and g.captions == g2.captions
    data._GLYPHS.clear()
    files[0].unlink()
    g3 = load_glyphs('train', n_per_class=5, seed=3)
    assert torch.equal(g.images, g3.images) and g.attrs == g3.attrs
    assert not torch.equal(g.images, load_glyphs('train', n_per_class=5, seed=4).images)


def test_glyphs_corrupt_cache_is_regenerated(cache):
    g = load_glyphs('all', size=32, n_per_class=2)
    assert g.images.shape == (124, 1, 32, 32)
    (f,) = cache.glob('glyphs-*.npz')
    f.write_bytes(b'garbage')
    data._GLYPHS.clear()
    with pytest.warns(UserWarning, match='unreadable glyph cache'):
        g2 = load_glyphs('all', size=32, n_per_class=2)
    assert torch.equal(g.images, g2.images)


def test_glyphs_bad_arguments(cache):
    with pytest.raises(ValueError, match=r"Unknown glyph image size 28; valid choices are \[16, 32\]"):
        load_glyphs(size=28)
    with pytest.raises(ValueError, match=r"Unknown split 'dev'"):
        load_glyphs('dev')
    with pytest.raises(
        ValueError, match=r'n_per_class \(one train and one test image at least\) must be an integer >= 2, got 1'
    ):
        load_glyphs(n_per_class=1)
    with pytest.raises(TypeError, match='got 2.5 of type float'):
        load_glyphs(n_per_class=2.5)
    with pytest.raises(ValueError, match='seed must be an integer >= 0, got -1'):
        load_glyphs(seed=-1)
    with pytest.raises(ValueError, match="Unknown split \\['train'\\]"):
        load_glyphs(['train'])


def test_bad_toy_and_drawing_arguments():
    for bad, err in ((0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)):
        for make in (lambda n: toy_2d('two_moons', n), swiss_roll, two_moons, gaussian_mixture().sample):
            with pytest.raises(err, match='n must be an integer >= 1'):
                make(bad)
    with pytest.raises(ValueError, match='noise must be a finite number >= 0, got nan'):
        two_moons(10, noise=float('nan'))
    with pytest.raises(ValueError, match="Unknown 2-D toy 3; valid choices"):
        toy_2d(3, 10)
    gm = gaussian_mixture()
    with pytest.raises(ValueError, match=r'x must have shape \(n, 2\), got \(5, 3\)'):
        gm.log_prob(torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r'x must have shape \(n, 2\), got \(5,\)'):
        gm.score(torch.zeros(5))
    with pytest.raises(ValueError, match='sigma must be a finite number >= 0, got -1.0'):
        gm.noised(1.0, -1.0)
    with pytest.raises(ValueError, match='means must be finite'):
        GaussianMixture([[float('nan'), 0.0]], torch.eye(2)[None])
    with pytest.raises(ValueError, match="ch must be one character, got 'AB'"):
        render_glyph('AB', 'DejaVuSans.ttf')
    with pytest.raises(FileNotFoundError, match="font_file 'Comic.ttf' is not a file in"):
        render_glyph('A', 'Comic.ttf')
    with pytest.raises(ValueError, match='size must be an integer >= 1, got 0'):
        render_glyph('A', 'DejaVuSans.ttf', size=0)
    with pytest.raises(ValueError, match="Unknown family 'script'; valid choices are \\['serif', 'sans', 'mono'\\]"):
        glyph_caption('A', 'script')
    with pytest.raises(ValueError, match="ch must be one letter or digit, got '!'"):
        glyph_caption('!', 'serif')
    with pytest.raises(ValueError, match="Unknown split \\['train'\\]"):
        load_digits(['train'])


# ---------- IDX / MNIST


def _write_fake_mnist(root, n_train=30, n_test=12, gz=True):
    rng = np.random.default_rng(0)
    ext = '.gz' if gz else ''
    for split, n in (('train', n_train), ('test', n_test)):
        write_idx(root / f'{MNIST_FILES[split][0]}{ext}', rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f'{MNIST_FILES[split][1]}{ext}', (np.arange(n) % 10).astype(np.uint8))
    return root


@pytest.mark.parametrize('dtype', ['u1', 'i1', '>i2', 'i4', 'f4', 'f8'])
@pytest.mark.parametrize('name', ['x.idx', 'x.idx.gz'])
def test_idx_round_trip(tmp_path, dtype, name):
    a = (
        (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
        if dtype[0] != 'u'
        else np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    )
    b = read_idx(write_idx(tmp_path / name, a))
    assert b.shape == a.shape and np.array_equal(a, b)


def test_idx_header_is_standard(tmp_path):
    write_idx(tmp_path / 'lab', np.array([7, 1], dtype=np.uint8))
    assert (tmp_path / 'lab').read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 1])
    write_idx(tmp_path / 'lab.gz', np.array([7, 1], dtype=np.uint8))
    assert gzip.decompress((tmp_path / 'lab.gz').read_bytes()) == bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 1])


@pytest.mark.parametrize('gz', [True, False])
def test_load_mnist_from_local_folder(tmp_path, gz):
    root = _write_fake_mnist(tmp_path, gz=gz)
    x, y = load_mnist(root, 'train')
    assert x.shape == (30, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1 and y.tolist() == [i % 10 for i in range(30)]
    raw = read_idx(root / (MNIST_FILES['train'][0] + ('.gz' if gz else '')))
    torch.testing.assert_close(
        x[:, 0], torch.from_numpy(raw).float() / 127.5 - 1, rtol=0, atol=0
    )  # the same two float32 ops
    assert load_mnist(root, 'test', kind='fashion_mnist')[0].shape == (12, 1, 28, 28)
    x32, _ = load_mnist(root, 'test', size=32)
    assert x32.shape == (12, 1, 32, 32) and (x32[..., :2, :] == -1).all()
    assert load_mnist(root, 'all', size=16)[0].shape == (42, 1, 16, 16)


def test_load_mnist_missing_folder_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist') as e:
        load_mnist(tmp_path / 'nope')
    assert 'nope' in str(e.value) and 'download=True' in str(e.value) and 'train-images-idx3-ubyte' in str(e.value)
    root = _write_fake_mnist(tmp_path)
    (root / 't10k-images-idx3-ubyte.gz').unlink()
    with pytest.raises(FileNotFoundError, match=r"missing in .*\['t10k-images-idx3-ubyte'\].*download=True"):
        load_mnist(root, 'test')
    assert load_mnist(root, 'train')[0].shape[0] == 30  # the train files are still fine


def test_load_mnist_corrupt_files(tmp_path):
    root = _write_fake_mnist(tmp_path)
    (root / 'train-images-idx3-ubyte.gz').write_bytes(b'\x1f\x8b\x08 broken')
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz' is not a valid IDX file"):
        load_mnist(root)
    (root / 'train-images-idx3-ubyte.gz').unlink()
    raw = gzip.decompress((root / 't10k-images-idx3-ubyte.gz').read_bytes())
    (root / 'train-images-idx3-ubyte').write_bytes(raw[:-10])  # truncated, plain
    with pytest.raises(ValueError, match="train-images-idx3-ubyte' is not a valid IDX file: header says"):
        load_mnist(root)
    (root / 'train-images-idx3-ubyte').write_bytes(b'hello world, not idx')
    with pytest.raises(ValueError, match='bad header'):
        load_mnist(root)
    write_idx(root / 'train-images-idx3-ubyte', np.zeros((29, 28, 28), np.uint8))
    with pytest.raises(ValueError, match='should hold 29 labels'):
        load_mnist(root)


def test_load_mnist_bad_choices(tmp_path):
    root = _write_fake_mnist(tmp_path)
    with pytest.raises(
        ValueError, match=r"Unknown MNIST kind 'kmnist'; valid choices are \['mnist', 'fashion_mnist'\]"
    ):
        load_mnist(root, kind='kmnist')
    with pytest.raises(ValueError, match=r"Unknown MNIST image size 64; valid choices are \[16, 28, 32\]"):
        load_mnist(root, size=64)


def test_download_is_only_tried_when_asked(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        data, 'download_mnist', lambda root, kind, mirrors: calls.append((root, kind)) or _write_fake_mnist(root)
    )
    with pytest.raises(FileNotFoundError):
        load_mnist(tmp_path / 'm')
    assert calls == []
    x, _ = load_mnist(tmp_path / 'm', 'test', kind='fashion_mnist', download=True)
    assert calls == [(tmp_path / 'm', 'fashion_mnist')] and x.shape == (12, 1, 28, 28)
    assert all(u.startswith('http') for urls in data.MNIST_URLS.values() for u in urls)


# ---------- DataLoaders


def test_datasets_names():
    assert set(DATASETS) == {
        'digits',
        'glyphs',
        'mnist',
        'fashion_mnist',
        'swiss_roll',
        'two_moons',
        'gaussian_mixture',
    }


def test_dataloaders_images_and_toys(tmp_path, cache):
    xb, yb = next(iter(get_dataloader('digits', batch_size=32, generator=torch.Generator().manual_seed(0))))
    assert xb.shape == (32, 1, 16, 16) and yb.shape == (32,) and yb.dtype == torch.int64
    xb, yb = next(iter(get_dataloader('glyphs', batch_size=8, n_per_class=4, size=32)))
    assert xb.shape == (8, 1, 32, 32)
    xb, yb, cb = next(iter(get_dataloader('glyphs', batch_size=8, n_per_class=4, captions=True, shuffle=False)))
    assert len(cb) == 8 and all(isinstance(c, str) for c in cb)
    root = _write_fake_mnist(tmp_path / 'm')
    for name in ('mnist', 'fashion_mnist'):
        dl = get_dataloader(name, batch_size=7, root=root, size=16, drop_last=True)
        assert len(dl) == 4 and next(iter(dl))[0].shape == (7, 1, 16, 16)
    for name in ('swiss_roll', 'two_moons', 'gaussian_mixture'):
        batch = next(iter(get_dataloader(name, batch_size=64, n=256)))
        assert len(batch) == 1 and batch[0].shape == (64, 2)
    tr = get_dataloader('two_moons', n=100, shuffle=False).dataset.cols[0]
    te = get_dataloader('two_moons', split='test', n=100, shuffle=False).dataset.cols[0]
    assert not torch.equal(tr, te) and torch.equal(
        tr, get_dataloader('two_moons', n=100, shuffle=False).dataset.cols[0]
    )


def test_dataloader_shuffle_follows_generator():
    a = next(iter(get_dataloader('digits', batch_size=16, generator=torch.Generator().manual_seed(5))))[1]
    b = next(iter(get_dataloader('digits', batch_size=16, generator=torch.Generator().manual_seed(5))))[1]
    assert torch.equal(a, b)


def test_dataloader_errors(tmp_path):
    with pytest.raises(
        ValueError,
        match=(
            r"Unknown data set 'cifar10'; valid choices are"
            r" \['digits', 'fashion_mnist', 'gaussian_mixture', 'glyphs', 'mnist', 'swiss_roll', 'two_moons'\]"
        ),
    ):
        get_dataloader('cifar10')
    with pytest.raises(ValueError, match='Unknown digits image size 20'):
        get_dataloader('digits', size=20)
    with pytest.raises(ValueError, match='size must be None'):
        get_dataloader('swiss_roll', size=16)
    with pytest.raises(FileNotFoundError, match='download=True'):
        get_dataloader('mnist', root=tmp_path / 'none')
    with pytest.raises(
        TypeError, match=r"get_dataloader\('digits'\) has no option \['n_per_class'\]; the options of 'digits' are \[\]"
    ):
        get_dataloader('digits', n_per_class=4)
    with pytest.raises(
        TypeError, match=r"has no option \['seeds'\]; the options of 'glyphs' are \['captions', 'n_per_class', 'seed'\]"
    ):
        get_dataloader('glyphs', seeds=3)
    with pytest.raises(ValueError, match='batch_size must be an integer >= 1, got 0'):
        get_dataloader('digits', batch_size=0)
    with pytest.raises(ValueError, match='Unknown glyph image size 0'):
        get_dataloader('glyphs', size=0)
    with pytest.raises(ValueError, match='seed must be an integer >= 0, got -1'):
        get_dataloader('two_moons', seed=-1)


# ---------- downloads fail fast and say what to do, and never hang


@contextlib.contextmanager
def silent_server():
    "A TCP server on 127.0.0.1 that accepts connections and never answers; yields (its URL, the accepted connections)."
    srv = socket.socket()
    srv.bind(('127.0.0.1', 0))
    srv.listen(16)
    srv.settimeout(0.05)
    accepted, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                accepted.append(srv.accept()[0])
            except OSError:  # the accept timed out: look at `stop` again
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{srv.getsockname()[1]}/', accepted
    finally:
        stop.set()
        thread.join(2)
        for c in accepted:
            c.close()
        srv.close()


@contextlib.contextmanager
def socket_closed_port():
    "The URL of a port on 127.0.0.1 that was free a moment ago: nothing listens there, a connection is refused."
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        url = f'http://127.0.0.1:{s.getsockname()[1]}'
    yield url


@pytest.fixture
def no_network(monkeypatch):
    "Every attempt to resolve a name or open a connection is recorded and refused."
    calls = []

    def refuse(*a, **k):
        calls.append(a)
        raise OSError('the network is switched off by the test')

    for obj, name in (
        (socket, 'getaddrinfo'),
        (socket, 'create_connection'),
        (socket.socket, 'connect'),
        (socket.socket, 'connect_ex'),
    ):
        monkeypatch.setattr(obj, name, refuse)
    return calls


@pytest.fixture
def online(monkeypatch):
    "Offline mode off, whatever the environment says (the tests run with HF_HUB_OFFLINE=1)."
    from huggingface_hub import constants

    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setenv('DIFFCOURSE_NET_TIMEOUT', '0.2')


def test_net_timeout_and_offline_switch(monkeypatch):
    monkeypatch.setenv('DIFFCOURSE_NET_TIMEOUT', '1.5')
    assert net_timeout() == 1.5
    for bad in ('0', '-1', 'soon'):
        monkeypatch.setenv('DIFFCOURSE_NET_TIMEOUT', bad)
        with pytest.raises(ValueError, match='DIFFCOURSE_NET_TIMEOUT'):
            net_timeout()
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    assert is_offline()


def test_mnist_offline_makes_no_connection(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises(OSError, match='offline mode is on') as e:
        download_mnist(tmp_path / 'm')
    assert no_network == []
    for name in sum(MNIST_FILES.values(), ()):
        assert f'{name}.gz' in str(e.value)
    assert f"into the folder '{tmp_path / 'm'}'" in str(e.value)
    with pytest.raises(OSError, match='offline mode is on'):
        load_mnist(tmp_path / 'm', download=True)
    assert no_network == [] and not (tmp_path / 'm').exists()


def test_mnist_download_stops_at_the_first_failure(tmp_path, online, monkeypatch):
    "A refused connection: one attempt per mirror, then the error; the other three files are not tried."
    attempts = []
    real = socket.create_connection

    def counting(address, *a, **k):
        attempts.append(address)
        return real(address, *a, **k)

    monkeypatch.setattr(socket, 'create_connection', counting)
    with socket_closed_port() as url:
        closed = url + '/'
    with pytest.raises(
        OSError, match='Could not download mnist.*Without network, put the files train-images-idx3-ubyte.gz'
    ):
        download_mnist(tmp_path, mirrors=[closed, closed])
    assert len(attempts) == 2


def test_mnist_download_from_a_server_that_never_answers(tmp_path, online):
    "The connection is accepted and nothing comes back: each mirror is given net_timeout() seconds, then the error."
    with silent_server() as (url, accepted):
        with pytest.raises(OSError, match='timed out') as e:
            download_mnist(tmp_path, mirrors=[url, url])
    assert len(accepted) == 2 and 'put the files' in str(e.value)


def test_the_no_network_fixture_sees_every_attempt(online, no_network):
    "The fixture the offline tests rely on does catch a connection (so their `== []` means no attempt was made)."
    import urllib.request

    with pytest.raises(OSError):
        urllib.request.urlopen('http://127.0.0.1:9/', timeout=1)
    from huggingface_hub import HfApi

    with pytest.raises(Exception):
        HfApi(endpoint='http://127.0.0.1:9').model_info('a/b', timeout=1)
    assert len(no_network) >= 2
