# Source on a GPU machine that lacks some of requirements.txt and has no package index (our lent H100):
#   source experiments/gpu/env.sh
# Installs the wheels carried in .whl/ (if any) into /tmp/site, puts them and src/ on PYTHONPATH, and defines a
# `vdistill` shell function (= python3 -m vdistill.cli) so the recipes' commands run unchanged.
# Fetch the wheels on a machine with an index: the pip commands are in BENCHMARKS.md.
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || return 1
fi
export PYTHONPATH="/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
vdistill() { python3 -m vdistill.cli "$@"; }
export -f vdistill
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__,
      'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
