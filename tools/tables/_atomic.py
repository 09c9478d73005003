"""What the table scripts share: writing JSON so that an interrupted run never leaves a half-written file."""

import json, os, tempfile
from pathlib import Path


def write_json(obj, path):
    "Write `obj` as JSON to `path` atomically (temporary file in the same folder, then rename)."
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'w') as f:
            json.dump(obj, f, indent=1)
            f.write('\n')
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the table is for everyone
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
