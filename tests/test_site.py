"""The docs site, opened in a real browser: every page, its title, its math, its images, its API reference, its layout
at 1400 px and its search; and what every lesson opens with (its Colab cell and its cost cell).

Builds `_docs/` with tools/site.py (pandoc; the same nbdev-processed notebooks quarto would render), serves it on
127.0.0.1 and opens every page in headless Chromium through selenium. The checks are plain functions of what the
browser reports (`page_problems`, `layout_problems`), unit-tested below on synthetic pages. Without Chromium (and no
root to apt-get it) the browser tests skip with the reason, and so does the search test without Pagefind, except when
the environment variable CI is set: then they fail. Screenshots (the home page, a lesson, lesson 07 at 1400 px, a
search) are saved to `_screenshots/` (git-ignored).
"""

import collections, contextlib, functools, http.server, importlib.util, json, os, re, shutil, subprocess, threading
import urllib.error, urllib.request
from pathlib import Path
import pytest, yaml

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / '_screenshots'
CHROME_FLAGS = [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
    '--disable-dev-shm-usage',
    '--window-size=1200,1600',
    '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1',
]  # only the local server is reachable


def _script(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_site():
    "tools/site.py as a module (it is a script, not part of the package)."
    return _script('course_site', ROOT / 'tools' / 'site.py')


def load_course():
    "tools/course.py as a module: the course's commands, the lab's command line, the lessons' headers."
    return _script('course_cmds', ROOT / 'tools' / 'course.py')


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
        links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'))\
.filter(h => !/^([a-z]+:|#)/.test(h))};'''


def has_math(nb):
    "Does a (processed) notebook's markdown hold LaTeX? Code spans and fences don't count."
    md = ''.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown')
    return bool(re.search(r'\$[^$]+\$|\\\(|\\\[', re.sub(r'```.*?```|`[^`\n]*`', '', md, flags=re.S)))


def page_problems(r, title, math=False, api=(), pages=(), files=None):
    """What is wrong with a page, from its report `r`:
    missing, untitled, math left raw, broken images or links, API missing."""
    if r['status'] != 200:
        return [f'HTTP {r["status"]}']
    want, h1 = ' '.join(title.replace('`', '').split()), ' '.join(r['h1'].split())
    p = [] if want in ' '.join(r['title'].split()) and h1 == want else [f'title {want!r} missing (h1 {h1!r})']
    if math and not r['n_math']:
        p.append('the notebook has math but the page has no MathML <math>')
    if m := RAW_MATH.search(r['prose']):
        p.append(f'raw LaTeX in the page text: ...{r["prose"][max(0, m.start() - 30) : m.end() + 30]!r}')
    p += [f'broken image {src!r}' for src, w in r['imgs'] if not w]
    for anchor, name in api:  # functions/classes: their show_doc heading; methods: at least their name
        if anchor not in r['ids'] and not ('.' in anchor and name.split('.')[-1] in r['text']):
            p.append(f'API reference of {name} (#{anchor}) missing')
    p += [f'sidebar has no link to {f}' for f in pages if r['nav'] and f not in r['nav']]
    if files is not None:
        p += [f'link to a missing page {h!r}' for h in sorted(set(r['links'])) if h.split('#')[0] not in files]
    return p


def api_by_page(syms):
    "_modidx's syms -> {page: [(anchor, qualified name)]}, private names (`_x`, `C._x`) left out as nbdev does."
    res = {}
    for mod in syms.values():
        for name, (link, _) in mod.items():
            page, _, anchor = link.partition('#')
            if name.split('.')[-1].startswith('_'):
                continue
            res.setdefault(page, []).append((anchor, name.split('.', 2)[-1]))
    return res


GOOD = dict(
    status=200,
    title='Core helpers – diffcourse',
    h1='Core helpers',
    prose='Broadcast with  per sample.',
    text='def append_dims(x, ndim) ... UNet forward',
    n_math=2,
    imgs=[['core_files/1.png', 640]],
    ids=['append_dims', 'seed_everything'],
    nav=['index.html', 'core.html'],
    links=['index.html', 'core.html#append_dims'],
)


def test_problems_of_a_good_page():
    test_api = [('append_dims', 'append_dims'), ('unet.forward', 'UNet.forward')]
    assert (
        page_problems(
            GOOD, 'Core helpers', math=True, api=test_api, pages=['core.html'], files={'index.html', 'core.html'}
        )
        == []
    )


@pytest.mark.parametrize(
    'change, expect',
    [
        (dict(status=404), 'HTTP 404'),
        (dict(h1='Something else'), "title 'Core helpers' missing"),
        (dict(n_math=0), 'no MathML'),
        (dict(prose=r'the forward process $$q(x_t \mid x_0)$$ adds noise'), 'raw LaTeX'),
        (dict(prose=r'where \(\bar\alpha_t\) is the product'), 'raw LaTeX'),
        (dict(prose=r'with $\sqrt{\bar\alpha_t}$ per image'), 'raw LaTeX'),
        (dict(imgs=[['core_files/1.png', 640], ['core_files/2.png', 0]]), "broken image 'core_files/2.png'"),
        (dict(ids=['seed_everything']), 'API reference of append_dims'),
        (dict(nav=['index.html']), 'sidebar has no link to core.html'),
        (dict(links=['notation.html#abar']), "link to a missing page 'notation.html#abar'"),
    ],
)
def test_problems_are_caught(change, expect):
    probs = page_problems(
        {**GOOD, **change},
        'Core helpers',
        math=True,
        api=[('append_dims', 'append_dims')],
        pages=['core.html'],
        files={'index.html', 'core.html'},
    )
    assert any(expect in p for p in probs), probs


def test_prices_and_code_are_not_math():
    assert page_problems({**GOOD, 'prose': 'costs $5 or $10 a month'}, 'Core helpers') == []
    nb = dict(cells=[dict(cell_type='markdown', source=['Set `$HOME` and run\n```sh\necho $PATH $x_1$\n```'])])
    assert not has_math(nb) and has_math(dict(cells=[dict(cell_type='markdown', source=['$x_t$'])]))


# ---------------------------------------------------------------- layout at 1400 px: math, sideways scroll, code width
LAYOUT_JS = r'''
const inCode = e => !!e.closest('pre, div.sourceCode, div.output, .cell-output');
const box = e => ({tag: e.tagName.toLowerCase(), cls: String(e.getAttribute('class') || ''), sw: e.scrollWidth,
                   cw: e.clientWidth, sh: e.scrollHeight, ch: e.clientHeight,
                   text: (e.textContent || '').trim().slice(0, 80)});
const r = {vw: document.documentElement.clientWidth, page_w: document.documentElement.scrollWidth,
           math: [...document.querySelectorAll('math[display="block"]')].map(box),
           sideways: [], code: [], fit120: null};
for (const e of document.querySelectorAll('body *')) {   // scroll containers (and main) wider than their box
  if (inCode(e) || e.closest('math')) continue;
  const scrolls = ['auto', 'scroll'].includes(getComputedStyle(e).overflowX);
  if (e.scrollWidth > e.clientWidth && (scrolls || e.tagName === 'MAIN')) r.sideways.push(box(e));
}
const cells = [...document.querySelectorAll('.cell > div.sourceCode')];
r.code = cells.map(box);
if (cells.length) {   // a line of 120 characters, unwrapped, in a copy of the first code cell
  const probe = cells[0].cloneNode(true);
  const code = probe.querySelector('code') || probe;
  code.textContent = 'x'.repeat(120);
  code.style.whiteSpace = 'pre';
  cells[0].after(probe);
  r.fit120 = box(probe);
  probe.remove();
}
return r;'''


def layout_problems(r):
    "What is wrong with a page's layout, from its LAYOUT_JS report: math that scrolls, sideways scroll outside code."
    p = [] if r['page_w'] <= r['vw'] else [f'the page scrolls sideways at {r["vw"]} px (it is {r["page_w"]} px wide)']
    for m in r['math']:  # pixels are integers here: any excess is a scrollbar (or clipped math)
        if m['sh'] > m['ch']:
            p.append(f'display math {m["sh"] - m["ch"]} px taller than its box: {m["text"]!r}')
        if m['sw'] > m['cw']:
            p.append(f'display math wider than the column ({m["sw"]} > {m["cw"]} px): {m["text"]!r}')
    p += [
        f'<{e["tag"]} class="{e["cls"]}"> scrolls sideways outside code ({e["sw"]} > {e["cw"]} px): {e["text"]!r}'
        for e in r['sideways']
    ]
    p += [
        f'a code cell scrolls sideways ({e["sw"]} > {e["cw"]} px): {e["text"]!r}'
        for e in r['code']
        if e['sw'] > e['cw']
    ]
    f = r['fit120']
    if f and f['sw'] > f['cw']:
        p.append(f'a 120-column line does not fit the code column ({f["sw"]} > {f["cw"]} px)')
    return p


BOX = dict(tag='math', cls='', sw=500, cw=800, sh=40, ch=40, text='x_t = ...')
GOOD_LAYOUT = dict(
    vw=1385,
    page_w=1385,
    math=[BOX],
    sideways=[],
    code=[dict(BOX, tag='div', cls='sourceCode')],
    fit120=dict(BOX, tag='div', sw=990, cw=1085),
)


def test_layout_of_a_good_page():
    assert layout_problems(GOOD_LAYOUT) == []


@pytest.mark.parametrize(
    'change, expect',
    [
        (dict(page_w=1500), 'the page scrolls sideways at 1385 px'),
        (dict(math=[dict(BOX, sh=44)]), 'display math 4 px taller than its box'),
        (dict(math=[dict(BOX, sw=900)]), 'display math wider than the column'),
        (dict(sideways=[dict(BOX, tag='table')]), '<table class=""> scrolls sideways outside code'),
        (dict(code=[dict(BOX, sw=1200, cw=1085)]), 'a code cell scrolls sideways'),
        (dict(fit120=dict(BOX, sw=990, cw=813)), 'a 120-column line does not fit'),
    ],
)
def test_layout_problems_are_caught(change, expect):
    probs = layout_problems({**GOOD_LAYOUT, **change})
    assert any(expect in p for p in probs), probs


# ---------------------------------------------------------------- search: a word only one lesson uses
def main_text(page_html, annotations=True):
    "The text of a page's main column (what Pagefind indexes), with or without MathML's LaTeX annotations."
    m = re.search(r'<main\b.*?</main>', page_html, re.S)
    body = m[0] if m else ''
    if not annotations:
        body = re.sub(r'<annotation\b.*?</annotation>', ' ', body, flags=re.S)
    return html_unescape(re.sub(r'<[^>]+>', ' ', body))


def html_unescape(s):
    import html

    return html.unescape(s)


def search_term(texts, lessons):
    """(word, page): the word that most often appears in one lesson while no other page has a word starting with its
    first 5 letters (Pagefind stems words and matches prefixes, so sharing a stem would bring other pages back).
    `texts` maps each page to (text without annotations, full text)."""
    words = {f: re.findall(r'[a-z]+', full.lower()) for f, (_, full) in texts.items()}
    best = (0, '', None)
    for f in lessons:
        others = {w[:5] for g, ws in words.items() if g != f for w in ws}
        own = re.findall(r'[a-z]+', texts[f][0].lower())
        n = collections.Counter(w for w in own if len(w) >= 7 and w[:5] not in others)
        best = max([best, *((c, w, f) for w, c in n.items())])
    assert best[2], f'no word of at least 7 letters belongs to one lesson only among {lessons}'
    return best[1], best[2]


def test_search_term_is_one_lessons_own():
    texts = {
        'a.html': ('the sampler and tweedie, tweedie', 'the sampler and tweedie, tweedie'),
        'b.html': ('the samplers and guidance', 'the samplers and guidance'),
        'index.html': ('lessons', 'lessons'),
    }
    assert search_term(texts, ['a.html', 'b.html']) == ('tweedie', 'a.html')  # 'sampler' is shared with 'samplers'
    assert search_term(texts, ['b.html']) == ('guidance', 'b.html')


def search_results(driver, url, term, timeout=30):
    "Type `term` into the site's search box; the pages its results link to (index.html for the site's root)."
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url + 'index.html')
    WebDriverWait(driver, timeout).until(lambda d: d.find_elements(By.CSS_SELECTOR, '#search input'))[0].send_keys(term)
    said = lambda d: [m for m in d.find_elements(By.CSS_SELECTOR, '.pagefind-ui__message') if term in m.text]
    WebDriverWait(driver, timeout).until(said)
    hrefs = [a.get_attribute('href') for a in driver.find_elements(By.CSS_SELECTOR, '.pagefind-ui__result-link')]
    return sorted({h.split('#')[0].split('?')[0].rsplit('/', 1)[-1] or 'index.html' for h in hrefs})


# ---------------------------------------------------------------- the browser, a server, the site
def _find(*names):
    return next((p for n in names if (p := shutil.which(n))), None)


def _tools():
    chrome = _find('chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable')
    driver = _find('chromedriver', os.path.join(os.environ.get('CHROMEWEBDRIVER', '/nonexistent'), 'chromedriver'))
    return chrome, driver


def ensure_chromium():
    "(browser, chromedriver), apt-getting Debian's chromium and chromium-driver where root can; one worker at a time."
    chrome, driver = _tools()
    if chrome and driver or not (hasattr(os, 'geteuid') and os.geteuid() == 0 and shutil.which('apt-get')):
        return chrome, driver
    import fcntl

    with open('/tmp/diffcourse-chromium.lock', 'w') as lock:  # test files run in parallel: the others wait here
        fcntl.flock(lock, fcntl.LOCK_EX)
        chrome, driver = _tools()
        if not (chrome and driver):
            env = {**os.environ, 'DEBIAN_FRONTEND': 'noninteractive'}
            wait = ['-o', 'DPkg::Lock::Timeout=600']  # and for any other apt-get running on the machine
            subprocess.run(['apt-get', *wait, 'update', '-qq'], env=env, capture_output=True, timeout=900)
            subprocess.run(
                ['apt-get', *wait, 'install', '-y', '-qq', 'chromium', 'chromium-driver'],
                env=env,
                capture_output=True,
                timeout=1800,
            )
            chrome, driver = _tools()
    return chrome, driver


@pytest.fixture(scope='module')
def browser():
    chrome, driver = ensure_chromium()
    why = (
        None
        if chrome and driver
        else f'no headless Chromium: browser {chrome}, chromedriver {driver} (not root, or apt-get failed)'
    )
    if not why:
        try:
            from selenium import webdriver
            from selenium.webdriver.chrome.service import Service
        except ImportError as e:
            why = f'selenium missing: {e}'
    if why:
        print(why)
        if os.environ.get('CI'):
            pytest.fail(f'{why}; CI is set, so this does not skip')
        pytest.skip(why)
    os.environ.setdefault('SE_OFFLINE', 'true')  # selenium-manager must not look for drivers online
    d = chrome_driver(webdriver, Service, chrome, driver)
    yield d
    d.quit()


def chrome_driver(webdriver, Service, chrome, driver):
    "A headless Chromium through selenium, with CHROME_FLAGS and a bounded page-load time."
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for f in CHROME_FLAGS:
        opts.add_argument(f)
    d = webdriver.Chrome(options=opts, service=Service(driver))
    d.set_page_load_timeout(60)
    return d


def set_viewport(driver, width, height=1000):
    "Make the page's viewport exactly `width` x `height` CSS pixels (the window size alone leaves it a little off)."
    metrics = dict(width=width, height=height, deviceScaleFactor=1, mobile=False)
    driver.execute_cdp_cmd('Emulation.setDeviceMetricsOverride', metrics)


@contextlib.contextmanager
def serve(folder):
    "Serve `folder` on 127.0.0.1 at a free port, in a thread; yields the base URL."

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f'http://127.0.0.1:{srv.server_address[1]}/'
    finally:
        srv.shutdown()
        srv.server_close()


def report(driver, url):
    "What the browser sees at `url` (and the HTTP status the server gives)."
    try:
        status = urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as e:
        status = e.code
    if status != 200:
        return dict(status=status)
    driver.get(url)
    return dict(driver.execute_script(REPORT_JS), status=status)


def test_browser_catches_a_broken_site(browser, tmp_path):
    "Synthetic pages: a good one, then one with a broken image, raw math, and a missing page."
    ok = (
        '<html><head><title>T – s</title></head><body><nav class="sidebar"><a href="a.html">a</a></nav><h1>T</h1>'
        '<p>x <math><mi>x</mi></math></p><img src="i.svg"></body></html>'
    )
    (tmp_path / 'i.svg').write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>')
    (tmp_path / 'a.html').write_text(ok)
    (tmp_path / 'b.html').write_text(
        ok.replace('i.svg', 'gone.png').replace('<math><mi>x</mi></math>', r'$$\bar\alpha$$')
    )
    with serve(tmp_path) as url:
        assert page_problems(report(browser, url + 'a.html'), 'T', math=True, pages=['a.html']) == []
        probs = page_problems(report(browser, url + 'b.html'), 'T', math=True)
        assert any('broken image' in p for p in probs) and any('raw LaTeX' in p for p in probs), probs
        assert page_problems(report(browser, url + 'missing.html'), 'T') == ['HTTP 404']


@pytest.fixture(scope='module')
def built(browser):
    "Build the site once for this file: the site module, the processed pages, the API by page, _docs/."
    site = load_site()
    site.build(readme=False)
    from nbdev.config import get_config

    cfg, proc = get_config(path=ROOT), ROOT / '_proc'
    entries = yaml.safe_load((proc / 'sidebar.yml').read_text())['website']['sidebar']['contents']
    nbs = [n for _, _, n in site.walk(entries) if n]
    ns = {}
    exec((ROOT / 'diffcourse' / '_modidx.py').read_text(), ns)
    pages = {}
    for nb in nbs:
        fm = site.front_matter(json.loads((proc / nb).read_text()))
        pages[nb] = dict(
            fm,
            math=has_math(json.loads((proc / nb).read_text())),
            file=fm.get('output-file', Path(nb).with_suffix('.html').name),
        )
    docs = ROOT / cfg.doc_path.name
    return dict(
        site=site,
        cfg=cfg,
        nbs=nbs,
        pages=pages,
        api=api_by_page(ns['d']['syms']),
        docs=docs,
        search=(docs / 'pagefind' / 'pagefind-ui.js').exists(),
    )


def test_site(browser, built):
    "Open every page: title, math, images, the API reference of every exported name."
    from nbdev.doclinks import nbglob

    cfg, nbs, pages, api, docs = (built[k] for k in ('cfg', 'nbs', 'pages', 'api', 'docs'))
    on_disk = list(nbglob(cfg.nbs_path, func=lambda d, f: (Path(d) / f).relative_to(cfg.nbs_path).as_posix()))
    assert sorted(on_disk) == sorted(nbs), f'notebooks not in the sidebar: {set(on_disk) ^ set(nbs)}'
    assert 'index.html' in [p['file'] for p in pages.values()], 'no home page: nbs/index.ipynb is missing'
    for doc in ('append_dims', 'seed_everything'):  # the shared helpers, named explicitly
        assert (doc, doc) in api.get('core.html', []), f'{doc} is not exported to core.html'
    problems = {}
    files = {f.relative_to(docs).as_posix() for f in docs.rglob('*') if f.is_file()}
    with serve(docs) as url:
        for nb, p in pages.items():
            r = report(browser, url + p['file'])
            probs = page_problems(
                r, p.get('title', ''), p['math'], api.get(p['file'], []), [q['file'] for q in pages.values()], files
            )
            if probs:
                problems[p['file']] = probs
        SHOTS.mkdir(exist_ok=True)
        for f in [
            'index.html',
            next((p['file'] for p in pages.values() if p['file'] not in ('index.html', 'core.html')), 'core.html'),
        ]:
            browser.get(url + f)
            browser.save_screenshot(str(SHOTS / f.replace('.html', '.png')))
    assert not problems, '\n'.join(f'{f}: {p}' for f, ps in problems.items() for p in ps)
    missing = set(api) - {p['file'] for p in pages.values()}
    assert not missing, f'_modidx points at pages the site does not have: {missing}'


def test_browser_catches_a_bad_layout(browser, tmp_path):
    "Synthetic pages at 1400 px: math with a scrollbar, a table scrolling sideways, a wide page; code may scroll."
    css = 'math[display="block"] { display: block; overflow: auto; height: 4px; } div.wide { overflow-x: auto; }'
    (tmp_path / 'bad.html').write_text(
        f'<html><head><style>{css}</style></head><body><main><p>text</p>'
        '<math display="block"><mfrac><mi>a</mi><mi>b</mi></mfrac></math>'
        '<div class="wide"><table><tr><td style="white-space: nowrap">'
        + 'wide ' * 400
        + '</td></tr></table></div><pre>'
        + 'x' * 400
        + '</pre><div style="width: 3000px">wide</div></main></body></html>'
    )
    set_viewport(browser, 1400)
    try:
        with serve(tmp_path) as url:
            browser.get(url + 'bad.html')
            probs = layout_problems(browser.execute_script(LAYOUT_JS))
    finally:
        browser.execute_cdp_cmd('Emulation.clearDeviceMetricsOverride', {})
    for expect in ('display math', '<div class="wide"> scrolls sideways', 'the page scrolls sideways'):
        assert any(expect in p for p in probs), (expect, probs)
    assert not any('<pre' in p for p in probs), probs


def test_site_layout(browser, built):
    "At 1400 px: no display math has a scrollbar or overflows; nothing scrolls sideways outside code; 120 columns fit."
    pages = {p['file']: p for p in built['pages'].values()}
    for f in ('samplers.html', 'distillation.html'):  # the lessons whose equations showed scrollbars
        assert f in pages and pages[f]['math'], f'{f} is missing, or has no display math to check'
    problems = {}
    set_viewport(browser, 1400)
    try:
        with serve(built['docs']) as url:
            for f in pages:
                browser.get(url + f)
                if probs := layout_problems(browser.execute_script(LAYOUT_JS)):
                    problems[f] = probs
            browser.get(url + 'samplers.html')
            browser.execute_script("document.querySelectorAll('math[display=\"block\"]')[1].scrollIntoView()")
            SHOTS.mkdir(exist_ok=True)
            browser.save_screenshot(str(SHOTS / 'samplers_1400.png'))
    finally:
        browser.execute_cdp_cmd('Emulation.clearDeviceMetricsOverride', {})
    assert not problems, '\n'.join(f'{f}: {p}' for f, ps in problems.items() for p in ps)


def test_site_search(browser, built):
    "The pandoc site's Pagefind search: a word only one lesson uses finds that lesson, and only it."
    if not built['search']:
        why = "the site was built without search: Pagefind is not installed (pip install 'pagefind[bin]')"
        print(why)
        if os.environ.get('CI'):
            pytest.fail(f'{why}; CI is set, so this does not skip')
        pytest.skip(why)
    docs, pages = built['docs'], [p['file'] for p in built['pages'].values()]
    texts = {
        f: (main_text((docs / f).read_text(), annotations=False), main_text((docs / f).read_text())) for f in pages
    }
    word, page = search_term(texts, [f for f in pages if f != 'index.html'])
    with serve(docs) as url:
        found = search_results(browser, url, word)
        SHOTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(SHOTS / 'search.png'))
    assert found == [page], f'searching {word!r} (a word only {page} uses) found {found}'


def test_the_site_builds_without_search(tmp_path):
    "Without Pagefind there is no search command, and the pages reference no search files."
    site = load_site()
    assert site.search_command(python=str(tmp_path / 'no-such-python')) is None
    nb = site.prep(dict(cells=[dict(cell_type='markdown', source='# T\n\ntext')]))
    for search, expect in ((False, False), (True, True)):
        out = tmp_path / f'page{int(search)}.html'
        site.pandoc(
            nb,
            out,
            '-s',
            '-V',
            'site=s',
            '-V',
            'lang=en',
            *(['-V', 'search=true'] if search else []),
            template=site.TEMPLATE,
            metadata_file='{"title": "T"}',
        )
        assert ('pagefind-ui.js' in out.read_text()) == expect, out.read_text()


# ---------------------------------------------------------------- what every lesson opens with
def _settings_version():
    lines = (ROOT / 'settings.ini').read_text().splitlines()
    return next(l.split('=')[1].strip() for l in lines if l.startswith('version'))


def _src(c):
    return ''.join(c['source'])


@pytest.mark.parametrize('nb', [p.name for p in load_course().lessons()])
def test_lesson_colab_cell_installs_this_version(nb):
    "The Colab cell installs the version in settings.ini (as its git tag); the badge opens this very notebook."
    course = load_course()
    cells = json.loads((course.NBS / nb).read_text())['cells']
    colab = [_src(c) for c in cells if c['cell_type'] == 'code' and 'google.colab' in _src(c) and "'pip'" in _src(c)]
    assert colab == [course.colab_source()], f'{nb}: run python3 tools/course.py headers (found {colab})'
    assert re.findall(r'@v([0-9][^\'"\s]*)', colab[0]) == [_settings_version()]
    badge = [_src(c) for c in cells if 'colab-badge.svg' in _src(c)]
    assert len(badge) == 1 and badge[0].rstrip(')').endswith(f'/nbs/{nb}'), badge


@pytest.mark.parametrize('nb', [p.name for p in load_course().lessons()])
def test_lesson_says_what_it_costs(nb):
    "Right after its badge a lesson says what it costs; the time is benchmarks/results.json's, never typed by hand."
    course = load_course()
    cells = json.loads((course.NBS / nb).read_text())['cells']
    badge = next(i for i, c in enumerate(cells) if 'colab-badge.svg' in _src(c))
    cost = _src(cells[badge + 1]) if badge + 1 < len(cells) else ''
    assert cost.startswith(course.COST_HEAD), f'{nb}: no cost cell after the badge (the lead applies the header script)'
    assert course.time_line(nb) in cost.splitlines(), f'{nb}: its time item disagrees with benchmarks/results.json'
    trained, loaded = course.cost_items(cost)
    assert trained and loaded


RESULTS = dict(
    machine=dict(date='2026-01-02'),
    notebooks=[
        dict(notebook='07_samplers.ipynb', mode='ci', seconds=44.3, ok=True, date='2026-01-02'),
        dict(notebook='07_samplers.ipynb', mode='learner', seconds=130.0, ok=True, date='2026-01-03'),
        dict(notebook='10_distillation.ipynb', mode='learner', seconds=20.0, ok=False, date='2026-01-03'),
    ],
)


def test_time_line_comes_from_the_results():
    course = load_course()
    assert course.time_line('07_samplers.ipynb', RESULTS) == (
        f'{course.TIME_ITEM} 2.2 min as you run it (one kernel, all cores); '
        '44 s as CI runs it (`IN_TEST=1`, one thread); measured 2026-01-03'
    )
    line = course.time_line('10_distillation.ipynb', RESULTS)
    assert 'did not finish in the last run as you run it' in line and 'not measured yet as CI runs it' in line


def test_lesson_headers_keep_ids_and_are_idempotent():
    "On a copy: the Colab cell rewritten in place, one new cost cell after the badge, nothing else; twice is once."
    course = load_course()
    nb = json.loads((course.NBS / '00_notation.ipynb').read_text())
    nb['cells'] = [c for c in nb['cells'] if not _src(c).startswith(course.COST_HEAD)]  # as before the first run
    ids = [c['id'] for c in nb['cells']]
    once = course.lesson_headers(json.loads(json.dumps(nb)), '00_notation.ipynb', ('nothing', 'nothing'), RESULTS)
    new = [c['id'] for c in once['cells']]
    badge = next(i for i, c in enumerate(once['cells']) if 'colab-badge.svg' in _src(c))
    assert new[: badge + 1] + new[badge + 2 :] == ids and re.fullmatch('[0-9a-f]{8}', new[badge + 1])
    twice = course.lesson_headers(json.loads(json.dumps(once)), '00_notation.ipynb', None, RESULTS)
    assert twice == once
    test_fail = pytest.raises(ValueError, match='has no cost cell yet: add a markdown cell after its badge')
    with test_fail:
        course.lesson_headers(json.loads(json.dumps(nb)), '00_notation.ipynb', None, RESULTS)
