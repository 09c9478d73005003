"""The lessons in JupyterLab, in a real browser: the server `python3 tools/course.py lab` starts, a lesson, a cell run.

Starts JupyterLab with the command line of `lab` (tools/course.py `lab_argv`: the venv's jupyter on nbs/, listening
on 127.0.0.1 only, with a token) at a free port, with Jupyter's config, data, runtime, settings and workspace folders
in a temporary directory (autosave off there, so the lesson on disk is never written). Headless Chromium opens a
lesson; the test adds a cell below the first one, types a question for the kernel, runs it with Shift+Enter through
the page and waits for its output: the interpreter of .venv, so the kernel is the course's. A screenshot is saved to
`_screenshots/lab.png` (git-ignored). Every wait is bounded and the server is always stopped. Without Chromium the
test skips with the reason, as tests/test_site.py's do, except under CI (the variable CI set), where it fails.
"""

import contextlib, hashlib, json, os, re, subprocess, time, urllib.error, urllib.request
from pathlib import Path
import pytest
from test_site import ROOT, SHOTS, browser, load_course, set_viewport  # noqa: F401 (browser is a fixture)

LESSON = '00_notation.ipynb'  # a lesson that opens quickly; any would do
SETTINGS = {  # JupyterLab user settings for the test: never save the lesson, no news or update checks
    '@jupyterlab/docmanager-extension/plugin.jupyterlab-settings': dict(autosave=False),
    '@jupyterlab/apputils-extension/notification.jupyterlab-settings': dict(fetchNews='false', checkForUpdates=False),
}


def wait_for(what, fn, timeout, every=0.5):
    "Call `fn` until it returns something truthy, for at most `timeout` seconds; fail saying `what` never happened."
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if r := fn():
            return r
        time.sleep(every)
    pytest.fail(f'{what} did not happen within {timeout} s')


def get_json(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


@contextlib.contextmanager
def lab_server(tmp):
    "JupyterLab as `course.py lab` runs it, isolated in `tmp`; yields (base URL, token, log file); always stopped."
    course = load_course()
    port, token = course.free_port(0), 'test-' + os.urandom(12).hex()
    for name, value in SETTINGS.items():
        (tmp / 'settings' / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / 'settings' / name).write_text(json.dumps(value))
    dirs = dict(
        JUPYTER_CONFIG_DIR='config',
        JUPYTER_DATA_DIR='data',
        JUPYTER_RUNTIME_DIR='runtime',
        IPYTHONDIR='ipython',
        JUPYTERLAB_SETTINGS_DIR='settings',
        JUPYTERLAB_WORKSPACES_DIR='workspaces',
    )
    env = {**course.lab_env(token), **{k: str(tmp / v) for k, v in dirs.items()}}
    env.pop('IN_TEST', None)  # the kernel a learner gets
    log = tmp / 'lab.log'
    with open(log, 'w') as out:
        proc = subprocess.Popen(
            [str(a) for a in course.lab_argv(port, '--no-browser')],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f'http://127.0.0.1:{port}'
    try:
        up = lambda: proc.poll() is not None or get_json(f'{base}/api/status?token={token}')
        wait_for('the JupyterLab server answering', up, 120)
        assert proc.poll() is None, f'JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}'
        yield base, token, log
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def test_lab_serves_on_localhost_with_a_token():
    "The command line binds 127.0.0.1 only, serves nbs/, never retries another port; the token goes by environment."
    course = load_course()
    argv = [str(a) for a in course.lab_argv(8888)]
    assert argv[0] == str(course.BIN / 'jupyter') and argv[1] == 'lab'
    for want in (
        '--ServerApp.ip=127.0.0.1',
        '--ServerApp.port=8888',
        '--ServerApp.port_retries=0',
        f'--ServerApp.root_dir={course.NBS}',
    ):
        assert want in argv, (want, argv)
    assert not any('token' in a.lower() for a in argv), argv
    env = course.lab_env('abc')
    assert env['JUPYTER_TOKEN'] == 'abc' and env['PATH'].startswith(str(course.BIN))
    assert (course.NBS / course.FIRST_LESSON).exists(), course.FIRST_LESSON


def test_lab_runs_a_cell_of_a_lesson(browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    course = load_course()
    lesson = course.NBS / LESSON
    before = hashlib.sha256(lesson.read_bytes()).hexdigest()
    with lab_server(tmp_path) as (base, token, log):
        with pytest.raises(urllib.error.HTTPError, match='403'):  # nothing without the token
            urllib.request.urlopen(f'{base}/api/contents/{LESSON}', timeout=10)
        try:
            set_viewport(browser, 1400, 900)
            browser.get(f'{base}/lab/tree/{LESSON}?token={token}')
            cells = lambda: browser.find_elements(By.CSS_SELECTOR, '.jp-NotebookPanel .jp-Notebook .jp-Cell')
            wait_for(f'{LESSON} showing its cells', cells, 120)
            kernels = lambda: get_json(f'{base}/api/kernels?token={token}') or []
            idle = lambda: [k for k in kernels() if k['execution_state'] == 'idle']
            (kernel,) = wait_for("the lesson's kernel starting and going idle", idle, 120)
            cells()[0].find_element(By.CSS_SELECTOR, '.jp-InputPrompt').click()  # select the first cell
            keys = ActionChains(browser)
            keys.send_keys(Keys.ESCAPE, 'b', Keys.ENTER)  # a new code cell below, edited
            keys.send_keys('import sys', Keys.ENTER, 'sys.executable')
            keys.key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT)  # run it
            keys.perform()
            outputs = lambda: [
                o
                for o in browser.find_elements(By.CSS_SELECTOR, '.jp-Cell .jp-OutputArea-output')
                if re.fullmatch(r"'.*python[0-9.]*'", o.text.strip())
            ]
            (out,) = wait_for("the kernel's answer appearing under the cell", outputs, 120)
            browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", out)
            SHOTS.mkdir(exist_ok=True)
            browser.save_screenshot(str(SHOTS / 'lab.png'))
            python = Path(out.text.strip().strip("'"))
            assert python.parent.resolve() == course.BIN.resolve(), f'the kernel runs {python}, not the python of .venv'
            assert kernel['name'] == 'python3', kernel
        except BaseException:
            print(log.read_text()[-3000:])
            raise
        finally:
            browser.get('about:blank')
            browser.execute_cdp_cmd('Emulation.clearDeviceMetricsOverride', {})
    assert hashlib.sha256(lesson.read_bytes()).hexdigest() == before, f'{LESSON} was written by the lab'
