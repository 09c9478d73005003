"""Make any file the course ships from its one declaration in `diffcourse.artifacts` (lesson 00).

    python tools/weights.py NAME                        # run NAME's recipe, write diffcourse/weights/NAME.safetensors
    python tools/weights.py NAME --out /tmp/x.safetensors   # the same run, written elsewhere (the manifest untouched)
    python tools/weights.py --all                       # every file missing or stale, in dependency order
    python tools/weights.py --check                     # each file's sha256 and recipe; non-zero on a mismatch
    accelerate launch tools/weights.py NAME             # the same run on a GPU or several (the recipes call `train`)

Training checkpoints to runs/NAME.ckpt.safetensors and resumes from there when rerun (`--runs` moves the folder).
A recipe is a function below, registered under its key with `@recipe`: it reads the artifact's declaration
(`a.args`, `a.arch`, `a.config`, `a.schedule`, ...) and returns `Made` (the models and what the run measured), or
None on the processes of a distributed run that do not write. Adding a shipped file: `declare(...)` it in
nbs/00b_artifacts.ipynb with an existing recipe key, or add a recipe here.
"""

from __future__ import annotations
import argparse, copy, json, sys, time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffcourse.artifacts import ARTIFACTS, MANIFEST, architecture, command, manifest, read, save, sha256
from diffcourse.core import WEIGHTS_DIR, pick, seed_everything, write_atomic

RECIPES = {}  # key -> recipe(artifact, runs) -> Made | None


def recipe(fn):
    "Register `fn` as the recipe of its name."
    RECIPES[fn.__name__] = fn
    return fn


@dataclass
class Made:
    "What a recipe made: the models to save (one, or prefix -> model) and what the run measured."

    models: object
    info: dict
    tokenizer: object = None
    tensors: dict = field(default_factory=dict)
    half: bool = False


def mean_last(losses: list, n: int) -> float:
    "The mean of the last `n` losses (what the files record as final_loss)."
    return sum(losses[-n:]) / len(losses[-n:])


def data_loader(p: dict):
    "The batches a recipe trains on: its declared data, loader and batch size, in the order seed 0 gives."
    from diffcourse.data import get_dataloader

    g = seed_everything(0)
    return get_dataloader(p['data'], batch_size=p['batch_size'], generator=g, drop_last=True, **p['loader'])


def ckpt(runs: Path, name: str) -> str:
    return str(runs / f'{name}.ckpt.safetensors')


# ---- the generic recipes ------------------------------------------------------------------------------------------
@recipe
def diffusion(a, runs):
    "DDPM training (lesson 04's loss and loop) of a course network, with a prediction type on a schedule."
    from diffcourse.guidance import cfg_ddpm_loss
    from diffcourse.schedules import Schedule
    from diffcourse.training import ddpm_loss, train

    p = a.args
    dl = data_loader(p)
    schedule = Schedule.from_name(a.schedule, T=a.T)
    model = architecture(a.arch)(**a.config)
    if 'p_uncond' in p:  # class-conditional, with condition dropout (classifier-free guidance, lesson 08)
        loss_fn = cfg_ddpm_loss(schedule, p['p_uncond'], a.config['num_classes'], a.prediction_type)
    else:
        loss_fn = lambda m, b: ddpm_loss(m, b[0], schedule, a.prediction_type)
    kw = dict(warmup=p['warmup'], ema_decay=p['ema_decay'], clip=1.0, ckpt=ckpt(runs, a.name), ckpt_every=250, seed=0)
    st = train(model, loss_fn, dl, p['steps'], p['lr'], **kw)
    if not st.accelerator.is_main_process:
        return None
    info = dict(steps=st.step, final_loss=round(mean_last(st.losses, p.get('loss_window', 200)), 5))
    return Made(copy.deepcopy(st.ema).cpu(), info, half=p.get('half', False))


@recipe
def classifier(a, runs):
    "A SmallCNN of lesson 06 trained with the course's loop on the train split; its test accuracy."
    from diffcourse.metrics import classifier_accuracy, classifier_data, train_classifier

    p = a.args
    state = train_classifier(p['classifier'], steps=p['steps'])
    if not state.accelerator.is_main_process:
        return None
    acc = classifier_accuracy(*classifier_data(p['classifier'], 'test'), state.model)
    return Made(state.model.cpu(), dict(steps=p['steps'], test_accuracy=round(acc, 4)))


# ---- the bespoke recipes ------------------------------------------------------------------------------------------
@recipe
def noisy_classifier(a, runs):
    "Lesson 08's noise-aware classifier on x_t ~ q(x_t | x0); its held-out accuracy at a few t."
    from diffcourse.data import get_dataloader, load_digits
    from diffcourse.guidance import noisy_classifier_loss
    from diffcourse.schedules import Schedule, q_sample
    from diffcourse.training import train

    p = a.args
    seed_everything(0)
    schedule = Schedule.from_name(a.schedule, T=a.T)
    g0 = torch.Generator().manual_seed(0)
    dl = get_dataloader('digits', batch_size=p['batch_size'], split='train', drop_last=True, generator=g0)
    model = architecture(a.arch)(**a.config)
    g = torch.Generator().manual_seed(1)  # the loss's t and eps; train checkpoints its state with the run
    kw = dict(warmup=p['warmup'], weight_decay=p['weight_decay'], ema_decay=p['ema_decay'], seed=0, generator=g)
    st = train(
        model,
        noisy_classifier_loss(schedule, g),
        dl,
        p['steps'],
        p['lr'],
        ckpt=ckpt(runs, a.name),
        ckpt_every=500,
        **kw,
    )
    if not st.accelerator.is_main_process:
        return None
    clf = st.ema.cpu().eval()
    x, y = load_digits('test')
    accs = {}
    with torch.no_grad():
        for t in (0, 250, 500, 750):
            x_t = q_sample(x, t, torch.randn(x.shape, generator=torch.Generator().manual_seed(t)), schedule.abar)
            accs[t] = round((clf(x_t, torch.full((len(x),), t)).argmax(1) == y).float().mean().item(), 4)
    info = dict(steps=st.step, final_loss=round(mean_last(st.losses, 200), 5), held_out_accuracy_by_t=accs)
    return Made(clf, info)


@recipe
def glyph_clip(a, runs):
    "Lesson 08b's tiny CLIP on the glyph captions; its held-out retrieval and zero-shot accuracies."
    from transformers import CLIPModel
    from diffcourse.clip import clip_loss_fn, clip_similarity, char_prompt, make_glyph_tokenizer
    from diffcourse.clip import retrieval_accuracy, tiny_clip_config
    from diffcourse.data import GLYPH_CHARS, get_dataloader, load_glyphs
    from diffcourse.training import train

    p = a.args
    seed_everything(0)
    tok = make_glyph_tokenizer()
    model = CLIPModel(tiny_clip_config(len(tok)))
    g0 = torch.Generator().manual_seed(0)
    dl = get_dataloader('glyphs', batch_size=p['batch_size'], captions=True, drop_last=True, generator=g0)
    loss_fn = clip_loss_fn(tok, p['p_drop'], generator=torch.Generator().manual_seed(1))
    kw = dict(warmup=p['warmup'], weight_decay=p['weight_decay'], ema_decay=p['ema_decay'], seed=0)
    st = train(model, loss_fn, dl, p['steps'], p['lr'], **kw)  # no checkpoint: its generator is not train's
    if not st.accelerator.is_main_process:
        return None
    clip = st.ema.cpu().eval()
    test = load_glyphs('test')
    texts = sorted(set(test.captions))
    acc = retrieval_accuracy(clip_similarity(clip, tok, test.images, texts), test.captions, texts)
    zs = clip_similarity(clip, tok, test.images, [char_prompt(c) for c in GLYPH_CHARS]).argmax(1)
    acc['zero-shot'] = (zs == test.labels).float().mean().item()
    held_out = {k: round(v, 4) for k, v in acc.items()}
    return Made(clip, dict(steps=st.step, final_loss=round(mean_last(st.losses, 200), 4), held_out=held_out), tok)


@recipe
def glyph_vae(a, runs):
    "Lesson 09's VAE (L1 + KL), its latent scaling factor fitted; its held-out L1."
    from diffcourse.data import load_glyphs
    from diffcourse.latent import decode_latents, encode_images, fit_scaling_factor, glyph_vae as make_vae
    from diffcourse.latent import vae_loss_fn
    from diffcourse.training import train

    p = a.args
    seed_everything(0)
    x = load_glyphs('train').images
    g0 = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(x)
    dl = torch.utils.data.DataLoader(ds, batch_size=p['batch_size'], shuffle=True, drop_last=True, generator=g0)
    kw = dict(warmup=p['warmup'], ema_decay=0.0, clip=1.0, ckpt=ckpt(runs, a.name), ckpt_every=250, seed=0)
    st = train(make_vae(), vae_loss_fn(p['kl_weight']), dl, p['steps'], p['lr'], **kw)
    if not st.accelerator.is_main_process:
        return None
    vae = st.model.cpu().eval()
    fit_scaling_factor(vae, x)
    test = load_glyphs('test').images
    with torch.no_grad():
        l1 = (decode_latents(vae, encode_images(vae, test)) - test).abs().mean().item()
    info = dict(steps=st.step, final_loss=round(mean_last(st.losses, 100), 5), test_l1=round(l1, 5))
    return Made(vae, info, half=True)


@recipe
def glyph_sd(a, runs):
    "Lesson 09's latent U-Net on glyph_vae's latents, cross-attending to glyph_clip's text encoder (frozen)."
    from diffcourse import artifacts, clip, data, latent, schedules, training

    seed_everything(0)
    p, vae = a.args, latent.load_glyph_vae()
    clip_model, tok = clip.load_glyph_clip()
    te = clip.clip_text_model(clip_model).eval().requires_grad_(False)
    g = data.load_glyphs('train')
    g0 = torch.Generator().manual_seed(0)
    ds = latent.latent_dataset(vae, g.images)
    dl = torch.utils.data.DataLoader(ds, batch_size=p['batch_size'], shuffle=True, drop_last=True, generator=g0)
    schedule = schedules.Schedule.from_name(a.schedule, a.T)
    loss_fn = latent.latent_loss_fn(tok, te, g.captions, schedule, p['p_uncond'], p['p_drop'])
    kw = dict(warmup=p['warmup'], ema_decay=p['ema_decay'], clip=1.0, ckpt=ckpt(runs, a.name), ckpt_every=250, seed=0)
    st = training.train(latent.glyph_unet(te.config.hidden_size), loss_fn, dl, p['steps'], p['lr'], **kw)
    if not st.accelerator.is_main_process:
        return None
    unet = st.ema.cpu().eval()
    info = dict(steps=st.step, final_loss=round(mean_last(st.losses, 200), 5))
    info.update(accuracy_by_scale=_sd_accuracy(tok, te.cpu(), unet, vae))
    info.update({f'{n}_sha256': sha256(artifacts.artifact_path(f'glyph_{n}')) for n in ('clip', 'vae')})
    return Made({'unet': unet, 'text_encoder': te}, info, tok, half=True)


def _sd_accuracy(tok, te, unet, vae) -> dict:
    "The glyph classifier's accuracy on 248 prompted samples (25 DDIM steps) by guidance scale."
    from diffcourse.clip import char_prompt
    from diffcourse.data import GLYPH_CHARS
    from diffcourse.latent import SDParts, glyph_scheduler, text_to_image
    from diffcourse.metrics import classifier_accuracy

    parts = SDParts(tok, te, unet, vae, glyph_scheduler())
    chars = [c for c in GLYPH_CHARS for _ in range(4)]
    labels = torch.tensor([GLYPH_CHARS.index(c) for c in chars])
    acc = {}
    for s in (1.0, 2.0, 3.0, 4.0, 6.0):
        g = torch.Generator().manual_seed(1)
        x = text_to_image(parts, [char_prompt(c) for c in chars], steps=25, guidance_scale=s, generator=g)
        acc[str(s)] = round(classifier_accuracy(x, labels, 'glyphs'), 4)
    return acc


def tiny_concept(em_max: float, word: str) -> tuple:
    "Lessons 09b and 09c's concept (seeded): the glyphs, which are drawn with em < em_max, their captions with `word`."
    from diffcourse.data import load_glyphs
    from diffcourse.inversion import insert_token

    seed_everything(0)
    g = load_glyphs('train')
    tiny = [i for i, at in enumerate(g.attrs) if at['em'] < em_max]
    return g, tiny, [insert_token(g.captions[i], word) for i in tiny]


@recipe
def token(a, runs):
    "Lesson 09b's textual inversion: one new word for the smallest-drawn training glyphs; the ink radii it gives."
    from diffcourse.clip import char_prompt
    from diffcourse.data import GLYPH_CHARS
    from diffcourse.inversion import ink_radius, insert_token, learn_token
    from diffcourse.latent import load_glyph_sd, text_to_image

    p = a.args
    g, tiny, captions = tiny_concept(p['em_max'], p['token'])  # seeds first, as every recipe does
    parts = load_glyph_sd()
    t0 = time.process_time()
    v, st = learn_token(parts, g.images[tiny], captions, p['token'], p['steps'], p['lr'], p['batch_size'])
    train_cpu_s = round(time.process_time() - t0, 1)
    chars = [c for c in GLYPH_CHARS for _ in range(4)]
    r = {}
    for name, prompts in (
        ('with', [insert_token(char_prompt(c), p['token']) for c in chars]),
        ('without', [char_prompt(c) for c in chars]),
    ):
        x = text_to_image(parts, prompts, steps=25, guidance_scale=4.0, generator=torch.Generator().manual_seed(1))
        r[name] = round(ink_radius(x).mean().item(), 4)
    r['real_tiny'] = round(ink_radius(g.images[tiny]).mean().item(), 4)
    r['real_all'] = round(ink_radius(g.images).mean().item(), 4)
    info = dict(concept=f"glyphs drawn with em < {p['em_max']}", images=len(tiny), steps=st.step)
    info.update(final_loss=round(mean_last(st.losses, 100), 5), ink_radius=r, train_cpu_s=train_cpu_s)
    return Made({}, info, tensors={p['token']: v})


@recipe
def dreambooth(a, runs):
    "Lesson 09c's DreamBooth runs on lesson 09b's concept: LoRA adapters or every U-Net weight, with or without prior."
    from diffcourse import dreambooth as db
    from diffcourse.latent import load_glyph_sd

    p = a.args
    g, tiny, captions = tiny_concept(p['em_max'], p['identifier'])  # seeds first, as every recipe does
    parts = load_glyph_sd()
    t0 = time.process_time()
    cls = db.class_images(parts, [g.captions[i] for i in tiny]) if p['prior_weight'] else None
    t1 = time.process_time()
    kw = dict(rank=p['rank'], prior_weight=p['prior_weight'], class_imgs=cls, steps=p['steps'], lr=p['lr'])
    st = db.dreambooth(parts, g.images[tiny], captions, p['identifier'], batch_size=p['batch_size'], **kw)
    t2 = time.process_time()
    trained = sum(v.numel() for k, v in parts.unet.named_parameters() if p['rank'] is None or 'lora_' in k)
    info = dict(identifier=p['identifier'], concept=f"glyphs drawn with em < {p['em_max']}", images=len(tiny))
    info.update(steps=st.step, final_loss=round(mean_last(st.losses, 100), 5), trained_parameters=trained)
    info.update(class_image_cpu_s=round(t1 - t0, 1), train_cpu_s=round(t2 - t1, 1))
    if p['rank'] is None:
        return Made({'unet': parts.unet.cpu().eval()}, info)
    return Made({}, info, tensors=db.lora_state_dict(parts.unet))


@recipe
def progressive(a, runs):
    "One round of progressive distillation (lesson 10): a student that takes half its teacher's DDIM steps."
    from diffcourse.distill import distill_round
    from diffcourse.samplers import load_denoiser

    p, (teacher_name,) = a.args, a.needs
    n = p['teacher_steps']
    dl = data_loader(p)
    teacher = load_denoiser(teacher_name)
    kw = dict(warmup=0, seed=0, ckpt=ckpt(runs, a.name), ckpt_every=100)
    student, st = distill_round(teacher, dl, n, n // 2, p['steps'], p['lr'], **kw)
    if not st.accelerator.is_main_process:
        return None
    info = dict(teacher=teacher_name, teacher_steps=n, student_steps=n // 2, steps=st.step, method='progressive')
    info.update(weighting='truncated_snr', final_loss=round(mean_last(st.losses, 50), 6))
    return Made(copy.deepcopy(student.net).cpu(), info, half=p['half'])


@recipe
def direct(a, runs):
    "Direct distillation (Luhman & Luhman 2021): a one-step student regressed on the teacher's (noise, sample) pairs."
    from diffcourse.distill import distill_direct, teacher_pairs
    from diffcourse.samplers import load_denoiser

    p, (teacher_name,) = a.args, a.needs
    teacher = load_denoiser(teacher_name)
    shape = (1, 16, 16) if p['data'] == 'digits' else (2,)
    cache = runs / f"distill_pairs_{p['data']}_{p['pairs']}.pt"
    if cache.is_file():
        noise, x = torch.load(cache, weights_only=True)  # tensors only: unpickles no code
    else:
        g = torch.Generator().manual_seed(1234)
        noise, x = teacher_pairs(teacher, (p['pairs'], *shape), p['teacher_steps'], generator=g, progress=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save((noise.cpu(), x.cpu()), cache)
    kw = dict(generator=torch.Generator().manual_seed(0), warmup=0, seed=0, ckpt=ckpt(runs, a.name), ckpt_every=100)
    student, st = distill_direct(teacher, noise, x, p['steps'], p['lr'], p['batch_size'], **kw)
    if not st.accelerator.is_main_process:
        return None
    info = dict(teacher=teacher_name, teacher_steps=p['teacher_steps'], student_steps=1, pairs=p['pairs'])
    info.update(steps=st.step, method='direct', final_loss=round(mean_last(st.losses, 50), 6))
    return Made(copy.deepcopy(student.net).cpu(), info, half=p['half'])


@recipe
def flow(a, runs):
    "Flow matching (lesson 07c): the toy diffusion recipe with the velocity loss on the straight path."
    from diffcourse.flow import flow_matching_loss, toy_flow_info
    from diffcourse.training import train

    p = a.args
    dl = data_loader(p)
    model = architecture(a.arch)(**a.config)
    loss_fn = lambda m, b: flow_matching_loss(m, b[0], time_sampling=p['time_sampling'])
    kw = dict(warmup=p['warmup'], ema_decay=p['ema_decay'], clip=p['clip'], ckpt=ckpt(runs, a.name), ckpt_every=500)
    st = train(model, loss_fn, dl, p['steps'], p['lr'], seed=0, **kw)
    if not st.accelerator.is_main_process:
        return None
    info = dict(toy_flow_info(), steps=st.step, final_loss=round(mean_last(st.losses, 500), 5))
    return Made(st.ema, info)


@recipe
def reflow(a, runs):
    "One round of reflow (Liu et al. 2023, lesson 07c): the flow fine-tuned on its own (noise, sample) pairs."
    from diffcourse.flow import load_flow, reflow_pairs, toy_flow_info, train_reflow

    p, (teacher_name,) = a.args, a.needs
    teacher = load_flow(teacher_name)
    pairs = reflow_pairs(teacher, p['pairs'], steps=p['ode_steps'], generator=torch.Generator().manual_seed(0))
    st = train_reflow(teacher, pairs, steps=p['steps'])
    if not st.accelerator.is_main_process:
        return None
    info = dict(toy_flow_info(), teacher=teacher_name, steps=st.step, final_loss=round(mean_last(st.losses, 500), 5))
    return Made(st.ema, info)


@recipe
def consistency(a, runs):
    "Lesson 10b: consistency distillation from a v-teacher, or consistency training of a fresh network."
    from diffcourse.consistency import consistency_distillation, consistency_training
    from diffcourse.samplers import load_denoiser
    from diffcourse.schedules import Schedule

    p = a.args
    dl = data_loader(p)
    gen = torch.Generator().manual_seed(1)  # the levels and the noise of the loss (checkpointed by train)
    kw = dict(warmup=p['warmup'], seed=0, ckpt=ckpt(runs, a.name), ckpt_every=250, generator=gen)
    t0 = time.perf_counter()
    if p['method'] == 'consistency_distillation':
        teacher = load_denoiser(p['teacher'])
        cm, st = consistency_distillation(teacher, dl, p['steps'], p['lr'], p['grid'], p['mu'], **kw)
        teacher_evals = p['steps'] * p['batch_size']  # one teacher DDIM step per sample per step
    else:
        net = architecture(a.arch)(**a.config)
        schedule = Schedule.from_name(a.schedule, T=a.T)
        cm, st = consistency_training(net, schedule, dl, p['steps'], p['lr'], p['grid'], ema_decay=p['ema_decay'], **kw)
        teacher_evals = 0
    if not st.accelerator.is_main_process:
        return None
    info = dict(method=p['method'], steps=st.step, final_loss=round(mean_last(st.losses, 200), 6))
    info.update(teacher_evals=teacher_evals, train_seconds=round(time.perf_counter() - t0, 1))
    info.update(threads=torch.get_num_threads())
    return Made(copy.deepcopy(cm.net).cpu(), info, half=p.get('half', False))


# ---- making, checking -----------------------------------------------------------------------------------------------
def declared_info(a) -> dict:
    "What the declaration says of the file, recorded in its info."
    keys = ('prediction_type', 'schedule', 'T')
    return {'data': a.data, 'lesson': f'nbs/{a.lesson}.ipynb', **{k: getattr(a, k) for k in keys if getattr(a, k)}}


def make(name: str, out=None, runs=Path('runs'), folder: Path = WEIGHTS_DIR):
    "Run `name`'s recipe and write its file (to `out`, or to `folder` with the manifest updated)."
    a = pick(ARTIFACTS, name, 'artifact')
    t0 = time.time()
    made = RECIPES[a.recipe](a, Path(runs))
    if made is None:  # not the main process of a distributed run
        return None
    path = Path(out) if out else folder / a.file
    info = {**declared_info(a), **made.info}
    kw = dict(tokenizer=made.tokenizer, tensors=made.tensors, half=made.half)
    save(path, made.models, name=a.name, recipe=a.recipe_record, **kw, **info)
    print(f'{name}: {time.time() - t0:.0f} s; {json.dumps(made.info)[:300]}; wrote {path}', flush=True)
    if not out:
        write_manifest(folder, {**manifest(folder), a.file: sha256(path)})
    return path


def write_manifest(folder: Path, hashes: dict):
    write_atomic(Path(folder) / MANIFEST, (json.dumps(hashes, indent=1, sort_keys=True) + '\n').encode())


def problems(folder: Path = WEIGHTS_DIR) -> dict:
    "File name -> what is wrong with it (missing, undeclared, sha256, recipe, command, declaration); {} if all is well."
    folder, hashes, bad = Path(folder), manifest(folder), {}
    files = {p.name for p in folder.glob('*.safetensors')}
    declared = {a.file: a for a in ARTIFACTS.values()}
    for f in sorted(files - set(declared)):
        bad[f] = 'not declared in diffcourse.artifacts'
    for f, a in declared.items():
        if f not in files:
            bad[f] = 'missing'
            continue
        _, meta = read(folder / f)
        recorded = json.loads(meta.get('recipe', 'null'))
        info = json.loads(meta.get('info', '{}'))
        wrong = [k for k, v in declared_info(a).items() if k not in ('lesson', 'data') and info.get(k) != v]
        if sha256(folder / f) != hashes.get(f):
            bad[f] = f'sha256 differs from {MANIFEST} ({hashes.get(f, "none recorded")[:12]})'
        elif recorded != a.recipe_record:
            bad[f] = f'its recipe {recorded} is not the declared {a.recipe_record}'
        elif meta.get('command') != command(a.name) or meta.get('artifact') != a.name or wrong:
            bad[f] = f"its command, name or info ({wrong}) differ from the declaration"
    return bad


def make_all(folder: Path = WEIGHTS_DIR, runs='runs', force: bool = False) -> list:
    "Make every file that is missing or not current, or whose needs were remade, in dependency order."
    bad, made = problems(folder), []
    for name, a in ARTIFACTS.items():  # declared in dependency order
        if force or a.file in bad or any(n in made for n in a.needs):
            make(name, None, runs, folder)
            made.append(name)
    return made


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('name', nargs='?', help=f'one of {list(ARTIFACTS)}')
    p.add_argument('--out', default=None, help='write the file here, not in the weights folder (manifest untouched)')
    p.add_argument('--all', action='store_true', help='make every missing or stale file, in dependency order')
    p.add_argument('--force', action='store_true', help='with --all: remake current files too')
    p.add_argument('--check', action='store_true', help="verify every file's sha256 and recorded recipe")
    p.add_argument('--dir', default=str(WEIGHTS_DIR), help='the weights folder (default: the shipped one)')
    p.add_argument('--runs', default='runs', help='where training checkpoints go, and are resumed from')
    a = p.parse_args(argv)
    folder = Path(a.dir)
    if a.check:
        bad = problems(folder)
        for f, why in bad.items():
            print(f'{f}: {why}')
        current = [f for f in (x.file for x in ARTIFACTS.values()) if f not in bad]
        print(f'{len(current)} of {len(ARTIFACTS)} declared files current' + ('' if bad else ': all'))
        return 1 if bad else 0
    if a.all:
        print('made:', make_all(folder, a.runs, a.force) or 'nothing (every file is current)')
        return 0
    if a.name is None:
        p.error('give a NAME, --all or --check')
    pick(ARTIFACTS, a.name, 'artifact')
    make(a.name, a.out, a.runs, folder)
    return 0


if __name__ == '__main__':
    sys.exit(main())
