#!/usr/bin/env bash
# Create a virtual environment with fakescan and its known-good dependencies.
# Usage: scripts/install.sh [VENV]   (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3.11}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip >/dev/null
"$VENV/bin/pip" install -q -e '.[test]'
# facenet-pytorch 2.6.0 pins torch<2.3 in its metadata; its real needs (torch, torchvision,
# numpy, Pillow, requests, tqdm) are already installed above, so install it without them.
"$VENV/bin/pip" install -q --no-deps facenet-pytorch==2.6.0
"$VENV/bin/python" -c "import facenet_pytorch, av, timm, ray; print('fakescan environment ready:', '$VENV')"
