"""Tests of diffcourse.guidance (lesson 08): cross-checks against diffusers, the equivalence of the guided
denoisers with the papers' eps-space formulas, every sampler walking a guided denoiser, bad input, and a brief
training run."""

import math
import pytest
import torch
import torch.nn.functional as F

from diffcourse.guidance import (
    NoisyClassifier,
    noisy_classifier_loss,
    check_scale,
    GradientGuidance,
    check_labels,
    classifier_log_prob,
    classifier_guidance,
    drop_labels,
    cfg_ddpm_loss,
    w_to_scale,
    scale_to_w,
    cfg_combine,
    ClassifierFreeGuidance,
    class_diversity,
)
from diffcourse.schedules import Schedule, sigma_to_abar, sigma_to_t
from diffcourse.samplers import Denoiser, sample, SAMPLERS
from diffcourse.unet import UNet

SCHEDULE = Schedule.from_name('linear', T=1000)
F32_EPS = 1.19e-7  # float32 machine epsilon
# A float32 forward pass of the tiny networks below (about 20 layers, each ending in a rounded sum) carries about 100
# roundings: its outputs are good to NET_EPS per unit of their magnitude. Two sides that feed a network inputs one
# rounding apart (x_t computed in two ways) differ by that much, times whatever multiplies the output afterwards.
NET_EPS = 100 * F32_EPS


def _tiny_unet(num_classes=None, seed=0):
    torch.manual_seed(seed)
    net = UNet(channels=(8, 16), attn=(False, True), layers=1, num_classes=num_classes)
    for p in net.conv_out.parameters():
        torch.nn.init.normal_(p, std=0.1)  # not the zero init: outputs that differ
    return net.eval()


def _tiny_classifier(seed=0):
    torch.manual_seed(seed)
    return NoisyClassifier(num_classes=10, channels=(8, 16), attn=(False, True)).eval()


# ---- classifier-free guidance against diffusers ----


@pytest.mark.parametrize('g', [0.0, 1.0, 2.5, 7.5])
def test_cfg_combine_matches_diffusers_guider(g):
    from diffusers.guiders import ClassifierFreeGuidance as DG

    gen = torch.Generator().manual_seed(0)
    u, c = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    # |u|, |c| < 5 and g <= 8.5: terms up to 8.5 * 10 = 85; three float32 roundings of 85: 3e-5; 1e-4 allowed
    torch.testing.assert_close(cfg_combine(u, c, g), DG(guidance_scale=g).forward(c, u).pred, rtol=0, atol=1e-4)
    w = g  # the paper's w, through diffusers' original formulation
    ref = DG(guidance_scale=w, use_original_formulation=True).forward(c, u).pred
    torch.testing.assert_close(cfg_combine(u, c, w_to_scale(w)), ref, rtol=0, atol=1e-4)


def test_cfg_combine_matches_stable_diffusion_pipeline():
    "The noise prediction StableDiffusionPipeline hands its scheduler equals cfg_combine of the U-Net's two halves."
    from transformers import CLIPTextConfig, CLIPTextModel
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffcourse.clip import make_glyph_tokenizer
    import tempfile

    torch.manual_seed(0)
    tok = make_glyph_tokenizer(tempfile.mkdtemp(), captions=['a bold serif capital A', 'a mono digit 7'])
    te = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'),
        up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'),
        block_out_channels=(16, 32),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=('DownEncoderBlock2D',) * 2,
        up_block_types=('UpDecoderBlock2D',) * 2,
        block_out_channels=(16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    sch = DDIMScheduler(
        beta_schedule='scaled_linear', beta_start=0.00085, beta_end=0.012, steps_offset=1, clip_sample=False
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=te,
        tokenizer=tok,
        unet=unet,
        scheduler=sch,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    unet_out, sched_in = [], []
    hook = unet.register_forward_hook(
        lambda m, args, out: unet_out.append((out[0] if isinstance(out, tuple) else out.sample).detach().clone())
    )
    step = sch.step

    def recording_step(model_output, *a, **k):
        sched_in.append(model_output.detach().clone())
        return step(model_output, *a, **k)

    sch.step = recording_step
    g = 4.5
    pipe(
        ['a bold serif capital A', 'a mono digit 7'],
        num_inference_steps=2,
        guidance_scale=g,
        output_type='latent',
        generator=torch.Generator().manual_seed(0),
    )
    hook.remove()
    assert len(unet_out) == len(sched_in) == 2
    for both, used in zip(unet_out, sched_in):
        uncond, cond = both.chunk(2)  # diffusers batches [unconditional, conditional]
        # the same U-Net outputs (|eps| < 5) combined by the same formula: g (cond - uncond) < 4.5 * 10 = 45, three
        # float32 roundings of 45: 1.6e-5; 1e-4 allowed
        torch.testing.assert_close(cfg_combine(uncond, cond, g), used, rtol=0, atol=1e-4)


def test_w_scale_conversion():
    assert w_to_scale(0.0) == 1.0 and w_to_scale(3.0) == 4.0 and scale_to_w(4.0) == 3.0
    u, c = torch.zeros(2), torch.ones(2)
    torch.testing.assert_close(
        cfg_combine(u, c, w_to_scale(2.0)), (1 + 2.0) * c - 2.0 * u, rtol=0, atol=0
    )  # small integers: exact


# ---- the guided denoisers equal the papers' eps-space formulas ----


def test_cfg_wrapper_equals_eps_space_cfg():
    net = _tiny_unet(num_classes=10)
    D = Denoiser(net, SCHEDULE, 'eps')
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 1, 16, 16, generator=gen) * 5, torch.tensor([0, 4, 9, 2])
    for sigma in (0.3, 5.0, 40.0):
        sigma = torch.tensor(sigma)
        with torch.no_grad():
            ours = ClassifierFreeGuidance(D, 3.0, class_labels=y)(x, sigma)
            abar = sigma_to_abar(sigma)
            x_t = abar.sqrt() * x
            t = sigma_to_t(sigma, SCHEDULE.abar).float().expand(4)
            eps_c, eps_u = net(x_t, t, class_labels=y), net(x_t, t)
            eps = (1 + 2.0) * eps_c - 2.0 * eps_u  # Ho & Salimans eq. 6, w = 2
            ref = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
        # Both sides are x0_hat = x - sigma (3 eps_c - 2 eps_u). The wrapper's network input x / sqrt(1 + sigma^2)
        # and the reference's sqrt(abar) x are one rounding apart, so eps (|eps| < 2) differs by up to 2 NET_EPS,
        # multiplied by sigma (3 + 2); x itself (|x| < 20) takes about 4 roundings on each side,
        # 20 * 4 * F32_EPS = 1e-5. At sigma = 40 that allows 4.8e-3, a thousandth of what a unit error in w would
        # change (sigma |eps_c - eps_u|, checked).
        atol = 1e-5 + float(sigma) * 5 * 2 * NET_EPS
        torch.testing.assert_close(ours, ref, rtol=0, atol=atol)
        assert (sigma * (eps_c - eps_u)).abs().max() > 100 * atol
        with torch.no_grad():  # g = 0 and g = 1 make the very same calls as D: bitwise equal
            torch.testing.assert_close(
                ClassifierFreeGuidance(D, 0.0, class_labels=y)(x, sigma), D(x, sigma), rtol=0, atol=0
            )
            torch.testing.assert_close(
                ClassifierFreeGuidance(D, 1.0, class_labels=y)(x, sigma), D(x, sigma, class_labels=y), rtol=0, atol=0
            )


def test_classifier_guidance_equals_dhariwal_eps_form():
    net, clf = _tiny_unet(), _tiny_classifier()
    D = Denoiser(net, SCHEDULE, 'eps')
    gen = torch.Generator().manual_seed(2)
    x, y, s = torch.randn(5, 1, 16, 16, generator=gen) * 2, torch.tensor([1, 2, 3, 4, 5]), 4.0
    for sigma in (0.5, 2.0, 20.0):
        sigma = torch.tensor(sigma)
        ours = classifier_guidance(D, clf, y, s)(x, sigma)
        abar = sigma_to_abar(sigma)
        x_t = (abar.sqrt() * x).requires_grad_(True)
        t = sigma_to_t(sigma, SCHEDULE.abar).float().expand(5)
        logp = F.log_softmax(clf(x_t, t), -1)[torch.arange(5), y].sum()
        (grad,) = torch.autograd.grad(logp, x_t)
        with torch.no_grad():
            eps = net(x_t, t) - s * (1 - abar).sqrt() * grad  # Dhariwal & Nichol, Alg. 2
            ref = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
        # x0_hat = x - sigma (eps - s sqrt(1 - abar) grad): the network inputs are one rounding apart, so eps
        # (|eps| < 3) differs by up to 3 NET_EPS and the classifier's gradient (|grad| < 1) by NET_EPS, multiplied by
        # sigma and sigma s; x (|x| < 10) takes ~4 roundings a side: 10 * 4 * F32_EPS = 5e-6. 1.7e-3 allowed at
        # sigma = 20.
        atol = 5e-6 + float(sigma) * (3 + s) * NET_EPS
        torch.testing.assert_close(ours, ref, rtol=0, atol=atol)


def test_gradient_guidance_through_x0():
    "With through_x0, the gradient flows back through the denoiser (checked against a finite difference)."
    net = _tiny_unet()
    D = Denoiser(net, SCHEDULE, 'eps')
    target = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    log_prob = lambda x, sigma, x0_hat: -((x0_hat - target) ** 2).flatten(1).sum(1)
    x, sigma, s = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(4)), torch.tensor(1.5), 0.7
    out = GradientGuidance(D, log_prob, s, through_x0=True)(x, sigma)
    with torch.enable_grad():
        xr = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_prob(xr, sigma, D(xr, sigma)).sum(), xr)
    # the same forward and backward passes on both sides; s sigma^2 |grad| < 40, added to |x0_hat| < 10 after three
    # float32 roundings: 3 * 40 * F32_EPS = 1.4e-5; 1e-4 allowed
    with torch.no_grad():
        torch.testing.assert_close(out, D(x, sigma) + s * sigma**2 * grad, rtol=0, atol=1e-4)
    # the no-backprop variant differs: it treats x0_hat as a constant of x
    out2 = GradientGuidance(D, log_prob, s, through_x0=False)(x, sigma)
    with torch.no_grad():  # log_prob uses only x0_hat: no gradient in x, so D(x) + 0 exactly
        torch.testing.assert_close(out2, D(x, sigma), rtol=0, atol=0)


@pytest.mark.parametrize('name', list(SAMPLERS))
def test_every_sampler_walks_guided_denoisers(name):
    net, cnet, clf = _tiny_unet(), _tiny_unet(num_classes=10), _tiny_classifier()
    y = torch.arange(4)
    for model in (
        classifier_guidance(Denoiser(net, SCHEDULE), clf, y, 2.0),
        ClassifierFreeGuidance(Denoiser(cnet, SCHEDULE), 3.0, class_labels=y),
    ):
        out = sample(name, model, (4, 1, 16, 16), 3, generator=torch.Generator().manual_seed(0))
        assert out.shape == (4, 1, 16, 16) and torch.isfinite(out).all()


# ---- bad input ----


def test_bad_scales():
    for bad in (-0.5, float('nan'), float('inf')):
        with pytest.raises(ValueError, match='finite number >= 0'):
            check_scale(bad)
        with pytest.raises(ValueError, match='finite number >= 0'):
            cfg_combine(torch.zeros(2), torch.ones(2), bad)
        with pytest.raises(ValueError, match='finite number >= 0'):
            ClassifierFreeGuidance(Denoiser(_tiny_unet(10), SCHEDULE), bad, class_labels=1)
        with pytest.raises(ValueError, match='finite number >= 0'):
            classifier_guidance(Denoiser(_tiny_unet(), SCHEDULE), _tiny_classifier(), 1, bad)
    with pytest.raises(TypeError, match=r"guidance scale must be a finite number >= 0, got 'strong'"):
        check_scale('strong')


def test_unknown_classes():
    with pytest.raises(ValueError, match=r'unknown class 10; valid classes are 0\.\.9'):
        check_labels(10, 10)
    with pytest.raises(ValueError, match=r'unknown class \[-1, 12\]'):
        check_labels([3, -1, 12], 10)
    with pytest.raises(TypeError, match='integers'):
        check_labels(torch.tensor([1.5]), 10)
    with pytest.raises(ValueError, match='3 class labels for a batch of 4'):
        check_labels([1, 2, 3], 10, B=4)
    with pytest.raises(ValueError, match='unknown class 11'):
        ClassifierFreeGuidance(Denoiser(_tiny_unet(10), SCHEDULE), 2.0, class_labels=torch.tensor([1, 11]))
    with pytest.raises(ValueError, match='unknown class 10'):
        classifier_guidance(Denoiser(_tiny_unet(), SCHEDULE), _tiny_classifier(), 10, 1.0)
    with pytest.raises(ValueError, match='needs a condition'):
        ClassifierFreeGuidance(Denoiser(_tiny_unet(10), SCHEDULE), 2.0)
    with pytest.raises(ValueError, match='differ in shape'):
        cfg_combine(torch.zeros(2, 3), torch.zeros(3, 2), 2.0)
    with pytest.raises(ValueError, match=r'drop probability p must be a finite number >= 0 and <= 1, got 1.5'):
        drop_labels(torch.arange(3), 1.5, 10)
    with pytest.raises(
        ValueError, match=r'labels must lie in \[0, 9\] \(the null class is 10\), got values in \[0, 10\]'
    ):
        drop_labels(torch.arange(11), 0.2, 10)
    with pytest.raises(ValueError, match=r'p_uncond must be a finite number >= 0 and <= 1, got -0.1'):
        cfg_ddpm_loss(SCHEDULE, -0.1)


def test_classifier_and_guidance_inputs():
    "The classifier and the guidance wrappers say what they want when given something else."
    clf, D = _tiny_classifier(), Denoiser(_tiny_unet(), SCHEDULE)
    x = torch.zeros(2, 1, 16, 16)
    assert clf(x, torch.tensor([3, 7])).shape == (2, 10) and clf(x, 5).shape == (2, 10)
    for bad in (x.double(), x.long(), torch.zeros(2, 3, 16, 16), torch.zeros(16, 16)):
        with pytest.raises(ValueError, match=r'x must be a torch.float32 tensor of shape \(B, 1, H, W\)'):
            clf(bad, 5)
    with pytest.raises(
        ValueError, match=r't must be one timestep or one per sample, shape \(\) or \(2,\), got shape \(3,\)'
    ):
        clf(x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r'channels \(12, 16\) must be multiples of groups=8'):
        NoisyClassifier(channels=(12, 16), attn=(False, False))
    with pytest.raises(ValueError, match='one flag per level'):
        NoisyClassifier(channels=(8, 16), attn=(False,))
    with pytest.raises(ValueError, match='num_classes must be an integer >= 1, got 0'):
        NoisyClassifier(num_classes=0)
    with pytest.raises(TypeError, match='log_prob must be a function'):
        GradientGuidance(D, 'not a function', 1.0)
    wrong = GradientGuidance(D, lambda x, sigma, x0_hat: x.flatten(1), 1.0)  # (B, 256) instead of (B,)
    with pytest.raises(ValueError, match=r'log_prob must return one value per sample, shape \(2,\), got \(2, 256\)'):
        wrong(x, torch.tensor(1.0))
    with pytest.raises(TypeError, match='classifier must be a network'):
        classifier_guidance(D, None, 1, 1.0)
    few = lambda x_t, t: torch.zeros(len(x_t), 3)  # a classifier of 3 classes
    with pytest.raises(ValueError, match=r'more than 5 classes, got shape \(2, 3\)'):
        classifier_guidance(D, few, 5, 1.0)(x, torch.tensor(1.0))
    with pytest.raises(ValueError, match="needs the classifier's schedule"):
        classifier_guidance(lambda x, sigma: x, clf, 1, 1.0)
    with pytest.raises(TypeError, match='uncond must be a dict'):
        ClassifierFreeGuidance(Denoiser(_tiny_unet(10), SCHEDULE), 2.0, uncond=torch.zeros(2), class_labels=1)
    with pytest.raises(ValueError, match=r'features must be \(N, D\) and labels \(N,\), got \(4, 2\) and \(3,\)'):
        class_diversity(torch.zeros(4, 2), torch.tensor([0, 0, 1]))


def test_drop_labels_and_diversity():
    y = torch.zeros(20000, dtype=torch.long)
    frac = (drop_labels(y, 0.2, 10, torch.Generator().manual_seed(0)) == 10).float().mean().item()
    assert abs(frac - 0.2) < 0.02
    f = torch.tensor([[0.0, 0.0], [3.0, 4.0], [10.0, 10.0], [10.0, 10.0]])
    assert class_diversity(f, torch.tensor([0, 0, 1, 1])) == pytest.approx((5.0 + 0.0) / 2, rel=1e-12)  # float64 pdist


# ---- brief training: the losses fall ----


def test_noisy_classifier_and_cfg_losses_fall():
    from diffcourse.data import load_digits
    from diffcourse.training import train

    x, y = load_digits('train')
    x, y = x[:256], y[:256]
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 256, 64)]
    torch.manual_seed(0)
    short = Schedule.from_name('linear', T=100)  # mild noise only, so that 60 steps can show learning
    st = train(
        _tiny_classifier(),
        noisy_classifier_loss(short, torch.Generator().manual_seed(0)),
        batches,
        60,
        3e-3,
        ema_decay=0,
        progress=False,
    )
    assert sum(st.losses[-10:]) / 10 < sum(st.losses[:10]) / 10 - 0.1
    st = train(
        _tiny_unet(10),
        cfg_ddpm_loss(SCHEDULE, 0.2, 10, generator=torch.Generator().manual_seed(0)),
        batches,
        30,
        3e-3,
        ema_decay=0,
        progress=False,
    )
    assert sum(st.losses[-5:]) / 5 < sum(st.losses[:5]) / 5


def test_sigma_cap():
    "sigma_cap replaces the weight sigma^2 by min(sigma, cap)^2."
    net = _tiny_unet()
    D = Denoiser(net, SCHEDULE, 'eps')
    log_prob = lambda x, sigma, x0_hat: -(x**2).flatten(1).sum(1)  # grad_x = -2x
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    for sigma, cap, w in ((3.0, None, 9.0), (3.0, 1.0, 1.0), (0.5, 1.0, 0.25)):
        out = GradientGuidance(D, log_prob, 0.1, sigma_cap=cap)(x, torch.tensor(sigma))
        # 0.1 w 2|x| < 0.9 * 2 * 3 = 5.4, its factors multiplied in another order: two roundings, 1.3e-6; 1e-5 allowed
        with torch.no_grad():
            torch.testing.assert_close(out, D(x, torch.tensor(sigma)) + 0.1 * w * (-2 * x), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match='sigma_cap must be a finite number >= 0'):
        GradientGuidance(D, log_prob, 1.0, sigma_cap=-1.0)
