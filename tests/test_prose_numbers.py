"""Every number a lesson's prose states as a result appears in an output of that lesson.

A lesson's markdown may quote numbers (accuracies, gaps, ratios, counts). Each one must come from a cell's stored
output in the same notebook (the outputs are what the site shows and what `course.py run` refreshes), or from its
code (a parameter the prose repeats), or be marked as quoted from elsewhere with an HTML comment in that cell, which
renders as nothing: `<!-- quoted: 49,408 48,894 (the CLIP tokenizer's files) -->`. A number matches an output number
when the output, rounded to the digits the prose gives, equals it; percentages also match fractions (96.3% and
0.963), and `1.20x` matches 1.2.

Not checked: single-digit integers, years, equation/section/figure/table/algorithm numbers, numbers inside inline
code, links and URLs, and the generated cost cells (checked against benchmarks/results.json by test_packaging).
"""

import json, re
from pathlib import Path

import pytest

NBS = Path(__file__).resolve().parents[1] / 'nbs'
NUM = re.compile(r'(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(\s*%|x\b|×)?')
REFERENCE = re.compile(
    r'(§|\beq(?:s)?\.?|\bEq(?:s)?\.?|\bequation|\bsec(?:tion)?\.?|\bSec(?:tion)?\.?|\bFig(?:ure)?\.?|\bfigure'
    r'|\bTable|\btable|\bAlg(?:orithm)?\.?|\balgorithm|\bApp(?:endix)?\.?|\blesson|\bLesson|\bv|\bcell|\bCell'
    r'|\bpart|\bPart|\bstep)\s*\(?[\d.,\s\-–and]*$'
)
QUOTED = re.compile(r'<!--\s*quoted:(.*?)-->', re.S)


def _lessons():
    return sorted(p for p in NBS.glob('*.ipynb') if not p.name.startswith('_'))


def _text(cell) -> str:
    s = cell['source']
    return ''.join(s) if isinstance(s, list) else s


def _outputs(nb) -> str:
    out = []
    for c in nb['cells']:
        for o in c.get('outputs', []):
            if 'text' in o:
                out.append(_text({'source': o['text']}))
            for k, v in o.get('data', {}).items():
                if k in ('text/plain', 'text/markdown', 'text/html'):
                    out.append(_text({'source': v}))
    return '\n'.join(out)


def _strip(md: str) -> str:
    "Markdown without what is not prose: comments, inline code, link targets, URLs, images."
    md = QUOTED.sub(' ', md)
    md = re.sub(r'<!--.*?-->', ' ', md, flags=re.S)
    md = re.sub(r'`[^`]*`', ' ', md)
    md = re.sub(r'\]\([^)]*\)', '] ', md)
    md = re.sub(r'https?://\S+', ' ', md)
    md = re.sub(r'arXiv:\s*\d{4}\.\d{4,5}', ' ', md)
    md = re.sub(r'\b\d+\.\d+\.\d+\.\d+\b', ' ', md)  # an IP address
    return md


def _value(token: str) -> float:
    return float(token.replace(',', ''))


def _decimals(token: str) -> int:
    return len(token.split('.')[1]) if '.' in token else 0


CODE_NUM = re.compile(r'(?<![\w.])\d+(?:_\d{3})+(?![\w])|(?<![\w.])\d+(?:\.\d*)?e[-+]?\d+')
POWER = re.compile(r'\s*\\(?:cdot|times)\s*10\^\{?(-?\d+)\}?')  # 8.5\cdot10^4 in LaTeX
PACKAGE = NBS.parent / 'diffcourse'


def _known_numbers(text: str) -> list:
    "Every number in `text`, as (token, value): 0.963, 70,000, and code's 70_000 and 1e-4."
    known = [(m.group(1), _value(m.group(1))) for m in NUM.finditer(text)]
    return known + [(m.group(0), float(m.group(0).replace('_', ''))) for m in CODE_NUM.finditer(text)]


def _library_numbers() -> list:
    "The numbers in the package's source: constants a lesson may repeat (the cosine schedule's 0.008, 0.999)."
    return _known_numbers('\n'.join(p.read_text() for p in sorted(PACKAGE.glob('*.py')) if p.name != '_modidx.py'))


def _matches(token: str, unit: str, known: list) -> bool:
    v = _value(token)
    d = _decimals(token)
    if unit.startswith('e'):  # m x 10^p: compare mantissas at the digits given
        p = int(unit[1:])
        return any(round(w / 10**p, d) == v for _, w in known)
    cands = [v]
    if unit and unit.strip() == '%':
        cands.append(v / 100)
    for tok, w in known:
        for c in cands:
            dd = d + (2 if c is not v else 0)
            if round(w, dd) == round(c, dd) or (tok == token):
                return True
    return False


def candidates(md: str):
    "The numbers of a markdown cell that state something: (token, unit) pairs."
    text = _strip(md)
    found = []
    for m in NUM.finditer(text):
        token, unit = m.group(1), m.group(2) or ''
        before = text[max(0, m.start() - 24) : m.start()]
        if REFERENCE.search(before):
            continue
        v = _value(token)
        if '.' not in token and not unit and (v < 10 or 1900 <= v <= 2030):
            continue
        if re.match(r'[\w-]', text[m.end() : m.end() + 1] or ' ') and not unit:  # 08b, 2-D, 16px
            continue
        power = POWER.match(text, m.end())
        if power:
            unit = f'e{power.group(1)}'
        found.append((token, unit))
    return found


def unmatched(path: Path) -> list:
    "(cell index, number) of every stated number of the notebook at `path` found in no output, code or mark."
    nb = json.loads(path.read_text())
    known = _known_numbers(_outputs(nb))
    known += _known_numbers('\n'.join(_text(c) for c in nb['cells'] if c['cell_type'] == 'code'))
    known += _library_numbers()
    bad = []
    for i, c in enumerate(nb['cells']):
        if c['cell_type'] != 'markdown':
            continue
        md = _text(c)
        if md.startswith('**What this lesson costs to run**'):
            continue
        marked = _known_numbers(' '.join(QUOTED.findall(md)))
        for token, unit in candidates(md):
            if not _matches(token, unit, known + marked):
                bad.append((i, token + unit.strip()))
    return bad


@pytest.mark.parametrize('path', _lessons(), ids=lambda p: p.stem)
def test_prose_numbers_come_from_outputs(path):
    bad = unmatched(path)
    assert not bad, f'{path.name}: numbers in the prose found in no output, no code and no quoted mark: {bad}'


def test_the_checker_catches_and_passes():
    assert candidates('The accuracy is 0.774 (eq. 13, §3.1), 45 words, 96.3% and 1.20x; lesson 08b.') == [
        ('0.774', ''),
        ('45', ''),
        ('96.3', '%'),
        ('1.20', 'x'),
    ]
    known = _known_numbers('acc 0.7741 words 45 frac 0.9632 ratio 1.2')
    assert all(_matches(t, u, known) for t, u in [('0.774', ''), ('45', ''), ('96.3', '%'), ('1.20', 'x')])
    assert not _matches('0.775', '', known)
    assert candidates('<!-- quoted: 49,408 --> it has `T = 1000` and [a](https://x.org/2006.11239)') == []
