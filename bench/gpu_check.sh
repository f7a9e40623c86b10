#!/usr/bin/env bash
# The GPU checks, as one prepared run for a session that is lent a GPU machine (the device tool):
# what has never run on a GPU first, each step under its own time limit, every log under $OUT.
#
#   here, once:  make gpu-wheels        (archc's dependencies the device image lacks, into .whl/)
#   device run:  bash bench/gpu_check.sh      with carry [".whl"] and timeout_s 540
#
# Steps (at most about 8 minutes; the first run, on an H200, is in docs/benchmarks.md): the
# environment; the Triton and CUDA kernel tests on the GPU
# (TRITON_INTERPRET=0, ARCHC_TEST_DEVICE=cuda); bench/bench_kernels.py; the GPU rows of
# bench/bench_sparse.py (2:4) and bench/bench_moe.py (grouped against torch._grouped_mm). Copy the
# tables into docs/benchmarks.md.
set -u
OUT=${OUT:-/tmp/archc-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# The machine is fresh each time: install into its Python as this checkout does into .venv
# (editable: archc.backends is the top-level backends/ folder, as in `make test`).
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl \
        || { echo "installing .whl failed"; exit 1; }
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 \
    || { echo "installing archc failed:"; tail -20 "$OUT/install.log"; exit 1; }

step() {  # step NAME SECONDS COMMAND...: run, keep its log, say how it ended
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    tail -15 "$OUT/$name.log"
}

step env 60 python3 -c "
import torch, triton, archc
print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)
print(torch.cuda.get_device_name(), torch.cuda.get_device_capability())"
step nvcc 20 nvcc --version
TRITON_INTERPRET=0 ARCHC_TEST_DEVICE=cuda step kernels 160 \
    python3 -m pytest -q -rfE --tb=short -n 8 --timeout 100 -p no:cacheprovider tests/kernels
step bench_kernels 200 python3 bench/bench_kernels.py --models gpt2,vit --dtype fp16
step bench_sparse 50 python3 bench/bench_sparse.py --no-cpu
step bench_moe 50 python3 bench/bench_moe.py --no-cpu --rounds 5
