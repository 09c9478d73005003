#!/usr/bin/env python3
"""Render the course site with pandoc when quarto is absent: `.venv/bin/python tools/site.py`.

nbdev's own pieces process the notebooks exactly as `nbdev_docs` would (show_doc cells executed, `#| hide`
cells dropped, front matter from the H1 and `>` summary) into `_proc/`, without `_ensure_quarto`, which would
try to download quarto. Then pandoc (from pypandoc-binary) renders one page per entry of `_proc/sidebar.yml`
into `_docs/` (math as MathML, plots extracted next to the pages, no CDN), and `_proc/index.ipynb` becomes
README.md as GitHub-flavoured markdown. Search: Pagefind (`pip install 'pagefind[bin]'`, which tools/course.py
installs where it can) indexes the pages' main column into `_docs/pagefind/` and its UI sits in the navbar; without
Pagefind the site is built without search and the build says so. Search needs the site served over http, not opened
as a file. Everything is read from nbdev's files: settings.ini -> nbdev.yml,
the notebooks -> sidebar.yml and the front matter; there is no configuration here.
"""

import base64, contextlib, html, json, re, shutil, subprocess, sys, tempfile
from pathlib import Path
import yaml, pypandoc

ROOT = Path(__file__).resolve().parent.parent
PANDOC_IN = 'ipynb+link_attributes+native_divs+markdown_in_html_blocks+tex_math_single_backslash-gfm_auto_identifiers'
BADGE_URL = 'https://colab.research.google.com/assets/colab-badge.svg'
IMG = {'image/png': 'png', 'image/jpeg': 'jpg', 'image/svg+xml': 'svg'}
ANSI = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')


def proc_nbs():
    "Run nbdev's processing (what `nbdev_proc_nbs` does, minus the quarto install): returns `_proc/`."
    import nbdev.quarto, nbdev.doclinks, nbdev.serve

    nbdev.quarto.refresh_quarto_yml()
    nbdev.doclinks._build_modidx()
    nbdev.quarto.nbdev_sidebar.__wrapped__()
    try:
        return Path(nbdev.serve.proc_nbs())
    except Exception as e:  # the same failure as nbdev_docs/quarto; say what usually causes it
        raise RuntimeError(
            f'{e}\nnbdev executes every cell holding an import (and export/show_doc cells) to render the '
            'docs: keep imports in cells of their own, apart from code that needs earlier cells.'
        ) from e


def front_matter(nb):
    "The YAML front matter nbdev put in the first raw cell."
    raw = [''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'raw']
    return yaml.safe_load(raw[0].strip().strip('-')) if raw else {}


def title_extras(src_nb):
    "Lines of the source notebook's H1 cell that nbdev drops with it (e.g. the Colab badge)."
    if not Path(src_nb).exists():
        return ''
    for c in json.loads(Path(src_nb).read_text())['cells']:
        s = ''.join(c['source'])
        if c['cell_type'] == 'markdown' and re.search(r'^#\s+\S', s, re.M):
            return '\n'.join(l for l in s.splitlines() if not re.match(r'#\s|>\s|-\s+\S.*:', l)).strip()
    return ''


def _opts(src):
    return dict(re.findall(r'^#\|\s*([\w-]+):\s*(.*?)\s*$', src, re.M))


def _md(src):
    return dict(cell_type='markdown', metadata={}, source=src)


def prep(nb, extras='', media=None):
    "Plain cells pandoc renders like quarto: cell options applied, plots written to `media` and linked."
    cells, n = [_md(extras)] if extras else [], 0
    for c in nb['cells']:
        src = ''.join(c['source'])
        if c['cell_type'] == 'markdown':
            cells.append(_md(src))
        if c['cell_type'] != 'code':
            continue
        o = _opts(src)
        if o.get('include') == 'false':
            continue
        outs = [] if o.get('output') == 'false' else c.get('outputs', [])
        if o.get('output') == 'asis':  # show_doc: its markdown output becomes the page's text
            md = [''.join(x['data']['text/markdown']) for x in outs if 'text/markdown' in x.get('data', {})]
            md = [
                re.sub(r'```(\w*)\n\s*\n(.*?)\n\s*```', r'```\1\n\2\n```', m.strip().removeprefix('---'), flags=re.S)
                for m in md
            ]
            cells += [_md(f'<div class="api">\n\n{m.strip()}\n\n</div>') for m in md]
            continue
        for x in outs:
            img = next((k for k in IMG if k in x.get('data', {})), None)
            if img and media:
                n, data = n + 1, ''.join(x['data'][img])
                f = Path(media) / f'{n}.{IMG[img]}'
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(data.encode() if img.endswith('xml') else base64.b64decode(data))
                x['data'] = {
                    'text/html': f'<img src="{f.parent.name}/{f.name}" alt="output {n} of {Path(media).name[:-6]}">'
                }
            for k in ('text', 'traceback'):
                if k in x:
                    x[k] = ANSI.sub('', ''.join(x[k]) if k == 'text' else '\n'.join(x[k]))
            if 'traceback' in x:
                x['traceback'] = x['traceback'].splitlines()
        body = '' if o.get('echo') == 'false' else re.sub(r'^#\|.*(\n|$)', '', src, flags=re.M).strip()
        cells.append(dict(cell_type='code', metadata={}, execution_count=None, outputs=outs, source=body))
    return dict(
        nbformat=4,
        nbformat_minor=5,
        cells=cells,
        metadata=dict(
            kernelspec=dict(name='python3', language='python', display_name='Python 3'),
            language_info=dict(name='python'),
        ),
    )


def pandoc(nb, out, *args, cwd='.', **files):
    """Render the notebook dict `nb` into `out` (relative to `cwd`);
    `files` (template, metadata_file, lua_filter) are texts."""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / 'in.ipynb').write_text(json.dumps(nb))
        for k, v in files.items():
            (Path(d) / k).write_text(v)
        subprocess.run(
            [
                pypandoc.get_pandoc_path(),
                '-f',
                PANDOC_IN,
                str(Path(d) / 'in.ipynb'),
                '-o',
                str(out),
                *args,
                *(f'--{k.replace("_", "-")}={Path(d) / k}' for k in files),
            ],
            cwd=cwd,
            check=True,
        )


def search_command(python=sys.executable):
    "The command that runs Pagefind, the static-search indexer (its Python package ships the binary); None without it."
    try:
        ok = subprocess.run([python, '-m', 'pagefind', '--version'], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return [python, '-m', 'pagefind'] if ok else None


NO_SEARCH = (
    "site search: Pagefind is not installed (pip install 'pagefind[bin]' into .venv): the site is built without search"
)


def walk(entries):
    "Flatten sidebar.yml's contents into (depth, section title or None, notebook path or None)."
    for e in entries:
        if isinstance(e, dict):
            yield 0, e.get('section'), e.get('href')
            yield from ((1, s, p) for _, s, p in walk(e.get('contents', [])))
        else:
            yield 0, None, e


def sidebar_html(entries, pages, current):
    "The sidebar's <ul>, in sidebar.yml's order, titled from each page's front matter."
    items = []
    for depth, section, nb in walk(entries):
        page = pages.get(nb)
        label = html.escape(section or (page or {}).get('title', str(nb)))
        cls = f' class="depth{depth}{" active" if nb == current else ""}{" section" if section else ""}"'
        items.append(f'<li{cls}><a href="{page["file"]}">{label}</a></li>' if page else f'<li{cls}>{label}</li>')
    return '<ul>' + ''.join(items) + '</ul>'


def fix_links(s, pages, site_url):
    "Site-absolute links -> relative, `NN_topic.ipynb` -> its page, the Colab badge -> a local copy."
    from nbdev.doclinks import _nbpath2html

    s = s.replace(f'href="{site_url}/', 'href="').replace(BADGE_URL, 'colab-badge.svg')

    def nb2html(m):
        nb = m[2] + '.ipynb'
        return f'{m[1]}{pages[nb]["file"] if nb in pages else _nbpath2html(Path(nb)).as_posix()}{m[3] or ""}"'

    return re.sub(r'((?:href|src)=")(?![a-z]+:)([^"#]+?)\.ipynb(#[^"]*)?"', nb2html, s)


def toc_html(s):
    "A table of contents from the page's h2/h3 headings (pandoc's --toc misses headings inside cells)."
    hs = re.findall(r'(?:<section id="([^"]+)"[^>]*>\s*)?<h([23])(?: id="([^"]+)")?[^>]*>(.*?)</h\2>', s, re.S)
    return (
        '<ul>'
        + ''.join(
            f'<li class="toc{l}"><a href="#{a or b}">{re.sub("<annotation.*?</annotation>|<[^>]+>", "", t)}</a></li>'
            for a, l, b, t in hs
            if a or b
        )
        + '</ul>'
    )


def build(root=ROOT, readme=True):
    "Process the notebooks and render `_docs/` (and README.md); returns the list of pages written."
    root = Path(root)
    with contextlib.chdir(root):
        from nbdev.config import get_config

        cfg, proc = get_config(), proc_nbs()
        site = yaml.safe_load((proc / 'nbdev.yml').read_text())['website']
        entries = yaml.safe_load((proc / 'sidebar.yml').read_text())['website']['sidebar']['contents']
        pages = {}
        for _, _, nb in walk(entries):
            if nb and str(nb).endswith('.ipynb') and (proc / nb).exists():
                fm = front_matter(json.loads((proc / nb).read_text()))
                pages[nb] = dict(fm, file=fm.get('output-file', Path(nb).with_suffix('.html').name))
        docs = Path(cfg.doc_path)
        shutil.rmtree(docs, ignore_errors=True)
        docs.mkdir(parents=True)
        (docs / 'site.css').write_text(CSS)
        (docs / 'colab-badge.svg').write_text(BADGE)
        search = search_command()
        if not search:
            print(NO_SEARCH, file=sys.stderr)
        if (proc / 'styles.css').exists():
            shutil.copy(proc / 'styles.css', docs / 'styles.css')
        for nb, page in pages.items():
            out = page['file']
            cells = prep(
                json.loads((proc / nb).read_text()), title_extras(cfg.nbs_path / nb), docs / f'{Path(out).stem}_files'
            )
            pandoc(
                cells,
                out,
                '-s',
                '--mathml',
                '--wrap=none',
                '-V',
                f'site={html.escape(site["title"])}',
                '-V',
                'lang=en',
                '-V',
                f'sidebar={sidebar_html(entries, pages, nb)}',
                *(['-V', 'search=true'] if search else []),
                cwd=docs,
                template=TEMPLATE,
                metadata_file=json.dumps({k: page[k] for k in ('title', 'description') if k in page}),
            )
            page_html = fix_links((docs / out).read_text(), pages, site['site-url'].rstrip('/'))
            (docs / out).write_text(page_html.replace('<!--TOC-->', toc_html(page_html), 1))
        if search:  # index the pages' main column (data-pagefind-body) into _docs/pagefind/
            subprocess.run([*search, '--site', str(docs), '--quiet'], check=True)
        if readme and (proc / cfg.readme_nb).exists():
            write_readme(proc, cfg, root)
        return [docs / p['file'] for p in pages.values()]


def write_readme(proc, cfg, root):
    "README.md from the processed index notebook, as GitHub-flavoured markdown (what `nbdev_readme` does)."
    nb = json.loads((proc / cfg.readme_nb).read_text())
    fm = front_matter(nb)
    head = f'# {fm.get("title", cfg.lib_name)}\n\n' + (f'> {fm["description"]}\n\n' if fm.get('description') else '')
    md = prep(nb, head + title_extras(cfg.nbs_path / cfg.readme_nb), root / (Path(cfg.readme_nb).stem + '_files'))
    for c in md['cells']:  # links between notebooks point at the notebooks on GitHub
        c['source'] = re.sub(r'\]\((?![a-z]+:)([^)\s]+?\.ipynb)', lambda m: f'](nbs/{m[1]}', c['source'])
    pandoc(
        md, root / 'README.md', '-t', 'gfm', '--wrap=none', lua_filter='function Div(d) return d.content end'
    )  # no cell divs


TEMPLATE = '''<!DOCTYPE html>
<html lang="$lang$"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>$pagetitle$ – $site$</title><link rel="stylesheet" href="site.css"><link rel="stylesheet" href="styles.css">
<style>$highlighting-css$</style>
$if(search)$<link rel="stylesheet" href="pagefind/pagefind-ui.css">
<script src="pagefind/pagefind-ui.js"></script>$endif$</head>
<body><header class="navbar"><a href="index.html">$site$</a>$if(search)$<div id="search"></div>$endif$</header>
<div class="layout"><nav class="sidebar">$sidebar$</nav>
<main data-pagefind-body><header class="title-block"><h1 class="title">$title$</h1>
$if(description)$<p class="description">$description$</p>$endif$</header>
$body$</main>
<nav class="toc"><div class="toc-title">On this page</div><!--TOC--></nav></div>
$if(search)$<script>new PagefindUI({element: '#search', baseUrl: new URL('.', location.href).pathname,
                   showSubResults: true, showImages: false, resetStyles: false});</script>$endif$
</body></html>
'''

BADGE = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="117" height="20"><rect width="117" height="20" rx="3" fill="#555"/>'
    '<path d="M58 0h56a3 3 0 0 1 3 3v14a3 3 0 0 1-3 3H58z" fill="#f9ab00"/>'
    '<g font-family="Verdana,DejaVu Sans,sans-serif" font-size="11" fill="#fff" text-anchor="middle">'
    '<text x="29" y="14">Open in</text><text x="87" y="14">Colab</text></g></svg>'
)

# A `\` at the end of a CSS line continues it: Python drops the backslash and the newline, the CSS text is unchanged.
CSS = '''
:root { --accent: #2780e3; --muted: #6c757d; --line: #dee2e6; --code-bg: #f8f9fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.6 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #212529; }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
.navbar { background: var(--accent); padding: .55rem 1.5rem; position: sticky; top: 0; z-index: 2;
  display: flex; align-items: center; gap: 2rem; }
.navbar > a { color: #fff; font-size: 1.25rem; font-weight: 600; }
/* Pagefind's search box in the navbar; its results drop down over the page */
#search { flex: 0 1 34rem; margin-left: auto; position: relative;
  --pagefind-ui-scale: .7; --pagefind-ui-border-width: 1px; }
#search .pagefind-ui__search-input { background: #fff; }
#search .pagefind-ui__drawer { position: absolute; top: 100%; left: 0; right: 0; background: #fff;
  border: 1px solid var(--line); border-radius: 6px; box-shadow: 0 8px 24px rgba(0, 0, 0, .18);
  max-height: 75vh; overflow-y: auto; padding: 0 1rem; }
#search .pagefind-ui__drawer:empty { display: none; }
/* The main column holds a 120-column code line at 1400 px (about 1000 px of .85rem monospace): a 220 px sidebar,
   and the table of contents only from 1600 px on. Prose keeps a readable measure; code and tables use the width. */
.layout { display: grid; grid-template-columns: 220px minmax(0, 1fr); gap: 2rem; max-width: 1720px;
  margin: 0 auto; padding: 0 1.5rem; }
.toc { display: none; }
@media (min-width: 1600px) { .layout { grid-template-columns: 220px minmax(0, 1fr) 200px; } .toc { display: block; } }
main p, main li, main blockquote, .title-block { max-width: 56rem; }
main td p, main td li, main p:has(> math[display="block"]) { max-width: none; }
.sidebar, .toc { position: sticky; top: 3.5rem; align-self: start; max-height: calc(100vh - 4rem); overflow-y: auto; \
padding-top: 1.5rem; font-size: .9rem; }
.sidebar ul, .toc ul { list-style: none; padding-left: 0; margin: 0; } \
.toc li.toc3 { padding-left: .8rem; font-size: .85rem; }
.sidebar li { margin: .15rem 0; } .sidebar li.depth1 { padding-left: 1rem; } \
.sidebar li.section { font-weight: 600; margin-top: .6rem; }
.sidebar a { color: #343a40; display: block; padding: .15rem .5rem; border-radius: 4px; }
.sidebar li.active > a { background: #e7f1fc; color: var(--accent); font-weight: 600; }
.toc { border-left: 1px solid var(--line); padding-left: 1rem; } .toc a { color: var(--muted); } \
.toc-title { font-weight: 600; margin-bottom: .4rem; }
main { padding: 1.5rem 0 4rem; min-width: 0; } \
.title-block { margin-bottom: 1.5rem; border-bottom: 1px solid var(--line); }
h1.title { margin: .5rem 0 .2rem; font-size: 2.2rem; } \
p.description { color: var(--muted); font-size: 1.15rem; margin-top: 0; }
h2 { margin-top: 2.2rem; padding-bottom: .2rem; border-bottom: 1px solid var(--line); } h3 { margin-top: 1.6rem; }
pre { background: var(--code-bg); padding: .7rem 1rem; border-radius: 4px; overflow-x: auto; font-size: .85rem; \
line-height: 1.45; margin: 0; }
code { font-family: SFMono-Regular, Menlo, Consolas, monospace; font-size: .9em; }
p code, li code, td code { background: var(--code-bg); padding: .1em .3em; border-radius: 3px; color: #7d12ba; }
.cell { margin: 1rem 0; } .cell > div.sourceCode, .cell > pre { border-left: 3px solid var(--accent); }
.cell-output, .cell > .output { margin: .3rem 0 0 .8rem; overflow-x: auto; }
.cell-output-stderr pre, .cell > .output.stderr pre { background: #fff5f5; }
.cell-output pre, .cell > .output pre { background: none; border-left: 2px solid lightsalmon; border-radius: 0; }
/* Source lines longer than the column wrap (continuations indented) instead of scrolling; outputs keep their layout. */
.cell pre > code.sourceCode { white-space: pre-wrap; overflow-wrap: anywhere; }
.cell pre > code.sourceCode > span { text-indent: -4ch; padding-left: 4ch; }
.api { border: 1px solid var(--line); border-radius: 6px; padding: .2rem 1rem .6rem; margin: 1.2rem 0; \
background: #fcfcfd; }
.api h3, .api h4 { margin-top: .6rem; font-family: SFMono-Regular, Menlo, Consolas, monospace; font-size: 1.1rem; }
.api pre { background: var(--code-bg); } .api a[target] { float: right; font-size: .8rem; }
/* Display math: Chromium lays MathML out a few px taller than its box, so any overflow setting showed a vertical
   scrollbar. Padding gives the box that room; overflow-y: hidden keeps rounding from ever drawing a scrollbar; a
   sideways scrollbar appears only for an equation wider than the column. */
math[display="block"] { margin: .3rem 0; padding: .5em 0; overflow-x: auto; overflow-y: hidden; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid var(--line); padding: .3rem .7rem; } img { max-width: 100%; }
blockquote { border-left: 4px solid var(--line); margin-left: 0; padding-left: 1rem; color: var(--muted); }
@media (max-width: 1000px) { .layout { grid-template-columns: 1fr; } \
.sidebar, .toc { position: static; max-height: none; }
  .toc { display: none; } #search { flex-basis: 16rem; } }
'''

if __name__ == '__main__':
    for p in build():
        print('wrote', p)
    print(
        f'site ready: {ROOT / "_docs" / "index.html"}'
        if (ROOT / '_docs' / 'index.html').exists()
        else 'no index.html (nbs/index.ipynb missing)',
        file=sys.stderr,
    )
