#!/usr/bin/env bash
# Set up the development environment, lint, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
# Some tests use Debian packages, installed here where we can (root with apt); elsewhere those
# tests skip and say why:
#   chromium               the explorer's browser test (driven through playwright, installed by --dev)
#   dataset-fashion-mnist  the full-size tests: Debian's Fashion-MNIST (60,000 + 10,000 official
#                          images in /usr/share/datasets/fashion-mnist/, found there by vaelab)
#   slurm-wlm, munge       a one-node SLURM cluster for the tests of `vaelab sweep --slurm`
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
command -v sbatch >/dev/null 2>&1 && [ -x /usr/sbin/slurmctld ] || missing+=(slurm-wlm)
command -v munged >/dev/null 2>&1 || [ -x /usr/sbin/munged ] || missing+=(munge)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages for the tests: ${missing[*]}"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
    || echo "could not install ${missing[*]}: the tests that need them will be skipped"
fi
.venv/bin/ruff check src tests benchmarks
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
