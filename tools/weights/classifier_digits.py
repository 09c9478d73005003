"""The digits classifier whose features FID uses (lesson 06), trained by the course's own loop.

.venv/bin/python tools/weights/classifier_digits.py    # writes diffcourse/weights/classifier_digits.safetensors
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _classifier import ship_classifier

if __name__ == '__main__':
    ship_classifier('digits', steps=3000)
