"""pytest hooks shared by nbval (nbs/) and the tests (tests/)."""

import tempfile

import pytest


def pytest_collection_modifyitems(config, items):
    """nbdev_clean stores notebooks with execution_count = null, and nbval then fails every cell
    that kept its output ("Unrun reference cell has outputs"). Number such cells in order, once, here."""
    for i, item in enumerate(items, 1):
        cell = getattr(item, 'cell', None)
        if cell is not None and cell.get('execution_count') is None and cell.get('outputs'):
            cell['execution_count'] = i


def pytest_generate_tests(metafunc):
    "A test that asks for `bad_case` runs once per entry of its module's BAD list of (call, error type, words)."
    if 'bad_case' in metafunc.fixturenames:
        bad = metafunc.module.BAD
        metafunc.parametrize('bad_case', bad, ids=[str(i) for i in range(len(bad))])


def expect_clear_error(
    call,  # a function of no arguments that makes one bad call
    err: type,  # the exception type it must raise
    words: str,
):  # words the message must contain (what was wrong and what is valid)
    "Assert that `call()` raises `err` with `words` in its message, and show the message when it does not."
    with pytest.raises(err) as e:
        call()
    assert words in str(e.value), str(e.value)


@pytest.fixture
def private_tempdir(tmp_path_factory, monkeypatch):
    """Point Python's temporary folder at a fresh folder of this test's own: other workers write into the shared one
    at the same time, so only a private folder shows what one call left behind."""
    folder = tmp_path_factory.mktemp('tempdir')  # made before the switch, under pytest's usual base
    monkeypatch.setattr(tempfile, 'tempdir', str(folder))
    return folder
