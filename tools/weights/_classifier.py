"""Shared by tools/weights/classifier_*.py: train one of the course's classifiers and ship its weights."""

import time
from diffcourse.core import weights_path
from diffcourse.metrics import CLASSIFIERS, classifier_accuracy, classifier_data, train_classifier
from diffcourse.training import save_pretrained


def ship_classifier(
    name: str,  # a key of diffcourse.metrics.CLASSIFIERS
    steps: int,  # optimizer steps
    **kw,
):  # passed to train_classifier
    "Train the classifier `name` with the course's loop, report its test accuracy, write diffcourse/weights/<file>."
    t0 = time.time()
    state = train_classifier(name, steps=steps, **kw)
    acc = classifier_accuracy(*classifier_data(name, 'test'), state.model)
    path = weights_path(f"{CLASSIFIERS[name]['weights']}.safetensors", must_exist=False)
    save_pretrained(
        state.model,
        path,
        data=f'{name}, train split',
        steps=steps,
        test_accuracy=round(acc, 4),
        train_kwargs=kw,
        lesson='nbs/06_metrics.ipynb',
        command=f'.venv/bin/python tools/weights/{CLASSIFIERS[name]["weights"]}.py',
    )
    print(
        f'{name}: test accuracy {acc:.2%} after {steps} steps ({time.time() - t0:.0f} s); wrote {path} '
        f'({path.stat().st_size / 1e3:.0f} kB)'
    )
    return acc
