# Source on a GPU machine that lacks some of requirements.txt and has no package index (our lent H100):
#   source experiments/gpu/env.sh
# Installs the wheels carried in .whl/ (if any) into /tmp/site, puts them and src/ on PYTHONPATH, and defines a
# `vdistill` shell function (= python3 -m vdistill.cli) so the recipes' commands run unchanged.
# Fetch the wheels on a machine with an index (imageio-ffmpeg does not fit a 64 MiB transfer: benches run --mp4 0):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl \
#     diffusers open_clip_torch ftfy wcwidth jsonargparse docstring_parser typeshed_client pydantic pydantic_core \
#     annotated_types typing_inspection hjson importlib_metadata typing_extensions
#   pip wheel --no-deps -w .whl deepspeed
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || return 1
fi
export PYTHONPATH="/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
vdistill() { python3 -m vdistill.cli "$@"; }
export -f vdistill
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__,
      'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
