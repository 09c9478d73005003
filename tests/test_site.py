"""The docs site, opened in a real browser: every page, its title, its math, its images, its API reference.

Builds `_docs/` with tools/site.py (pandoc; the same nbdev-processed notebooks quarto would render), serves it on
127.0.0.1 and opens every page in headless Chromium through selenium. The checks are plain functions of what the
browser reports (`page_problems`), unit-tested below on synthetic pages. Without Chromium (and no root to apt-get
it) the browser tests skip with the reason, except when the environment variable CI is set: then they fail.
Screenshots of the home page and of one lesson are saved to `_screenshots/` (git-ignored).
"""
import contextlib, functools, http.server, importlib.util, json, os, re, shutil, subprocess, threading, urllib.error, urllib.request
from pathlib import Path
import pytest, yaml

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT/'_screenshots'
CHROME_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
                '--disable-sync', '--no-first-run', '--disable-dev-shm-usage', '--window-size=1200,1600',
                '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1']   # only the local server is reachable

def load_site():
    "tools/site.py as a module (it is a script, not part of the package)."
    spec = importlib.util.spec_from_file_location('course_site', ROOT/'tools'/'site.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

# ---------------------------------------------------------------- the checks: plain functions of a page report
RAW_MATH = re.compile(r'\$\$|\\\(|\\\)|\\\[|\\\]|\\begin\{|\$[^$\n]*?[\\^_{][^$\n]*?\$')
REPORT_JS = '''
const prose = document.body.cloneNode(true);
prose.querySelectorAll('pre, code, math, script, style').forEach(e => e.remove());
return {title: document.title, h1: (document.querySelector('h1') || {}).textContent || '',
        prose: prose.textContent, text: document.body.textContent, n_math: document.querySelectorAll('math').length,
        imgs: [...document.images].map(i => [i.getAttribute('src'), i.complete ? i.naturalWidth : 0]),
        ids: [...document.querySelectorAll('[id]')].map(e => e.id),
        nav: [...document.querySelectorAll('nav.sidebar a')].map(a => a.getAttribute('href')),
        links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')).filter(h => !/^([a-z]+:|#)/.test(h))};'''

def has_math(nb):
    "Does a (processed) notebook's markdown hold LaTeX? Code spans and fences don't count."
    md = ''.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown')
    return bool(re.search(r'\$[^$]+\$|\\\(|\\\[', re.sub(r'```.*?```|`[^`\n]*`', '', md, flags=re.S)))

def page_problems(r, title, math=False, api=(), pages=(), files=None):
    "What is wrong with a page, from its report `r`: missing, untitled, math left raw, broken images or links, API missing."
    if r['status'] != 200: return [f'HTTP {r["status"]}']
    want, h1 = ' '.join(title.replace('`', '').split()), ' '.join(r['h1'].split())
    p = [] if want in ' '.join(r['title'].split()) and h1 == want else [f'title {want!r} missing (h1 {h1!r})']
    if math and not r['n_math']: p.append('the notebook has math but the page has no MathML <math>')
    if m := RAW_MATH.search(r['prose']): p.append(f'raw LaTeX in the page text: ...{r["prose"][max(0, m.start()-30):m.end()+30]!r}')
    p += [f'broken image {src!r}' for src, w in r['imgs'] if not w]
    for anchor, name in api:   # functions/classes: their show_doc heading; methods: at least their name
        if anchor not in r['ids'] and not ('.' in anchor and name.split('.')[-1] in r['text']):
            p.append(f'API reference of {name} (#{anchor}) missing')
    p += [f'sidebar has no link to {f}' for f in pages if r['nav'] and f not in r['nav']]
    if files is not None: p += [f'link to a missing page {h!r}' for h in sorted(set(r['links'])) if h.split('#')[0] not in files]
    return p

def api_by_page(syms):
    "_modidx's syms -> {page: [(anchor, qualified name)]}, private names (`_x`, `C._x`) left out as nbdev does."
    res = {}
    for mod in syms.values():
        for name, (link, _) in mod.items():
            page, _, anchor = link.partition('#')
            if name.split('.')[-1].startswith('_'): continue
            res.setdefault(page, []).append((anchor, name.split('.', 2)[-1]))
    return res

GOOD = dict(status=200, title='Core helpers – diffcourse', h1='Core helpers', prose='Broadcast with  per sample.',
            text='def append_dims(x, ndim) ... UNet forward', n_math=2, imgs=[['core_files/1.png', 640]],
            ids=['append_dims', 'seed_everything'], nav=['index.html', 'core.html'], links=['index.html', 'core.html#append_dims'])

def test_problems_of_a_good_page():
    test_api = [('append_dims', 'append_dims'), ('unet.forward', 'UNet.forward')]
    assert page_problems(GOOD, 'Core helpers', math=True, api=test_api, pages=['core.html'], files={'index.html', 'core.html'}) == []

@pytest.mark.parametrize('change, expect', [
    (dict(status=404), 'HTTP 404'),
    (dict(h1='Something else'), "title 'Core helpers' missing"),
    (dict(n_math=0), 'no MathML'),
    (dict(prose=r'the forward process $$q(x_t \mid x_0)$$ adds noise'), 'raw LaTeX'),
    (dict(prose=r'where \(\bar\alpha_t\) is the product'), 'raw LaTeX'),
    (dict(prose=r'with $\sqrt{\bar\alpha_t}$ per image'), 'raw LaTeX'),
    (dict(imgs=[['core_files/1.png', 640], ['core_files/2.png', 0]]), "broken image 'core_files/2.png'"),
    (dict(ids=['seed_everything']), 'API reference of append_dims'),
    (dict(nav=['index.html']), 'sidebar has no link to core.html'),
    (dict(links=['notation.html#abar']), "link to a missing page 'notation.html#abar'")])
def test_problems_are_caught(change, expect):
    probs = page_problems({**GOOD, **change}, 'Core helpers', math=True, api=[('append_dims', 'append_dims')], pages=['core.html'],
                          files={'index.html', 'core.html'})
    assert any(expect in p for p in probs), probs

def test_prices_and_code_are_not_math():
    assert page_problems({**GOOD, 'prose': 'costs $5 or $10 a month'}, 'Core helpers') == []
    nb = dict(cells=[dict(cell_type='markdown', source=['Set `$HOME` and run\n```sh\necho $PATH $x_1$\n```'])])
    assert not has_math(nb) and has_math(dict(cells=[dict(cell_type='markdown', source=['$x_t$'])]))

# ---------------------------------------------------------------- the browser, a server, the site
def _find(*names):
    return next((p for n in names if (p := shutil.which(n))), None)

def _tools():
    chrome = _find('chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable')
    driver = _find('chromedriver', os.path.join(os.environ.get('CHROMEWEBDRIVER', '/nonexistent'), 'chromedriver'))
    return chrome, driver

@pytest.fixture(scope='module')
def browser():
    chrome, driver = _tools()
    if not (chrome and driver) and hasattr(os, 'geteuid') and os.geteuid() == 0 and shutil.which('apt-get'):
        env = {**os.environ, 'DEBIAN_FRONTEND': 'noninteractive'}
        subprocess.run(['apt-get', 'update', '-qq'], env=env, capture_output=True)
        subprocess.run(['apt-get', 'install', '-y', '-qq', 'chromium', 'chromium-driver'], env=env, capture_output=True)
        chrome, driver = _tools()
    why = None if chrome and driver else f'no headless Chromium: browser {chrome}, chromedriver {driver} (not root, or apt-get failed)'
    if not why:
        try:
            from selenium import webdriver
            from selenium.webdriver.chrome.service import Service
        except ImportError as e: why = f'selenium missing: {e}'
    if why:
        print(why)
        if os.environ.get('CI'): pytest.fail(f'{why}; CI is set, so this does not skip')
        pytest.skip(why)
    os.environ.setdefault('SE_OFFLINE', 'true')   # selenium-manager must not look for drivers online
    opts = webdriver.ChromeOptions(); opts.binary_location = chrome
    for f in CHROME_FLAGS: opts.add_argument(f)
    d = webdriver.Chrome(options=opts, service=Service(driver))
    d.set_page_load_timeout(30)
    yield d
    d.quit()

@contextlib.contextmanager
def serve(folder):
    "Serve `folder` on 127.0.0.1 at a free port, in a thread; yields the base URL."
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a): pass
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try: yield f'http://127.0.0.1:{srv.server_address[1]}/'
    finally: srv.shutdown(); srv.server_close()

def report(driver, url):
    "What the browser sees at `url` (and the HTTP status the server gives)."
    try: status = urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as e: status = e.code
    if status != 200: return dict(status=status)
    driver.get(url)
    return dict(driver.execute_script(REPORT_JS), status=status)

def test_browser_catches_a_broken_site(browser, tmp_path):
    "Synthetic pages: a good one, then one with a broken image, raw math, and a missing page."
    ok = ('<html><head><title>T – s</title></head><body><nav class="sidebar"><a href="a.html">a</a></nav><h1>T</h1>'
          '<p>x <math><mi>x</mi></math></p><img src="i.svg"></body></html>')
    (tmp_path/'i.svg').write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>')
    (tmp_path/'a.html').write_text(ok)
    (tmp_path/'b.html').write_text(ok.replace('i.svg', 'gone.png').replace('<math><mi>x</mi></math>', r'$$\bar\alpha$$'))
    with serve(tmp_path) as url:
        assert page_problems(report(browser, url + 'a.html'), 'T', math=True, pages=['a.html']) == []
        probs = page_problems(report(browser, url + 'b.html'), 'T', math=True)
        assert any('broken image' in p for p in probs) and any('raw LaTeX' in p for p in probs), probs
        assert page_problems(report(browser, url + 'missing.html'), 'T') == ['HTTP 404']

def test_site(browser):
    "Build the site and open every page: title, math, images, the API reference of every exported name."
    site = load_site()
    site.build(readme=False)
    from nbdev.config import get_config
    from nbdev.doclinks import nbglob
    cfg, proc = get_config(path=ROOT), ROOT/'_proc'
    entries = yaml.safe_load((proc/'sidebar.yml').read_text())['website']['sidebar']['contents']
    nbs = [n for _, _, n in site.walk(entries) if n]
    on_disk = list(nbglob(cfg.nbs_path, func=lambda d, f: (Path(d)/f).relative_to(cfg.nbs_path).as_posix()))
    assert sorted(on_disk) == sorted(nbs), f'notebooks not in the sidebar: {set(on_disk) ^ set(nbs)}'
    ns = {}; exec((ROOT/'diffcourse'/'_modidx.py').read_text(), ns)
    api = api_by_page(ns['d']['syms'])
    pages = {}
    for nb in nbs:
        fm = site.front_matter(json.loads((proc/nb).read_text()))
        pages[nb] = dict(fm, math=has_math(json.loads((proc/nb).read_text())),
                         file=fm.get('output-file', Path(nb).with_suffix('.html').name))
    assert 'index.html' in [p['file'] for p in pages.values()], 'no home page: nbs/index.ipynb is missing'
    for doc in ('append_dims', 'seed_everything'):   # the shared helpers, named explicitly
        assert (doc, doc) in api.get('core.html', []), f'{doc} is not exported to core.html'
    problems, docs = {}, ROOT/cfg.doc_path.name
    files = {f.relative_to(docs).as_posix() for f in docs.rglob('*') if f.is_file()}
    with serve(docs) as url:
        for nb, p in pages.items():
            r = report(browser, url + p['file'])
            probs = page_problems(r, p.get('title', ''), p['math'], api.get(p['file'], []),
                                  [q['file'] for q in pages.values()], files)
            if probs: problems[p['file']] = probs
        SHOTS.mkdir(exist_ok=True)
        for f in ['index.html', next((p['file'] for p in pages.values() if p['file'] not in ('index.html', 'core.html')), 'core.html')]:
            browser.get(url + f); browser.save_screenshot(str(SHOTS/f.replace('.html', '.png')))
    assert not problems, '\n'.join(f'{f}: {p}' for f, ps in problems.items() for p in ps)
    missing = set(api) - {p['file'] for p in pages.values()}
    assert not missing, f'_modidx points at pages the site does not have: {missing}'
