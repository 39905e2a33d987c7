#!/usr/bin/env bash
# Create scripts/zoo/.venv with the pinned tool versions (PyPI only).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/pip install --upgrade pip
.venv/bin/pip install -r requirements.txt
.venv/bin/pip install --no-deps -r requirements-nodeps.txt
.venv/bin/python -c "import torch, onnx, onnxruntime, peft, torch_rechub, fuxictr, recbole; print('ok', torch.__version__)"
