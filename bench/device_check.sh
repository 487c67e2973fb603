#!/usr/bin/env bash
# The GPU checks of one device lease, prepared beforehand: the nccl training path, the network's
# strain run on CUDA, and a GPU throughput figure (issue 16). Nothing here runs in CI.
#
# 1. Here, on a machine that reaches PyPI, once per session (the wheels are git-ignored):
#        bash bench/device_check.sh wheels
#    downloads into wheelhouse/ (~25 MB) the Python 3.12 wheels of what stemstrain needs and the
#    device image lacks (it has torch, numpy, scipy, xarray, numba, h5py, matplotlib, onnxruntime,
#    pytest, ...; the device tool's KINDS.md lists them). Its versions of those differ from our pins.
# 2. On the lent machine, through the device tool's run with carry ["wheelhouse"] and a timeout that
#    leaves time for a second try (the whole script takes a few minutes):
#        bash bench/device_check.sh run
#    writes to $OUT: versions.txt, nvidia-smi.txt, pytest_gpu.txt (training tests in one process,
#    where torch.distributed takes nccl on a GPU, and the network's strain tests, where `auto` takes
#    CUDA), infer_cuda.txt and infer_cuda.json (bench/infer.py --device cuda).
set -euo pipefail

# Not on the device image (2026-11-17), or needed at our pinned version: name==version or name.
WHEELS=(
    abtem==1.0.11 ase==3.29.0 zarr==3.1.6 numcodecs donfig google-crc32c dask==2026.8.0
    distributed==2026.8.0 tblib zict locket partd tornado pydantic==2.14.4 pydantic-core
    typing-inspection annotated-types pyfftw lazy-importer tzdata importlib-metadata
    ipympl ipywidgets ipython ipython-pygments-lexers comm traitlets jedi parso pexpect ptyprocess
    prompt-toolkit wcwidth stack-data asttokens executing pure-eval matplotlib-inline
    jupyterlab-widgets widgetsnbextension
)

wheels() {
    mkdir -p wheelhouse
    python3 -m pip download --quiet --no-deps --dest wheelhouse --python-version 3.12 --only-binary=:all: \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        "${WHEELS[@]}"
    du -sh wheelhouse
}

run() {
    local out=${OUT:?"run on the device machine, where the device tool sets OUT"}
    python3 -m pip install --quiet --no-index --no-deps wheelhouse/*.whl
    python3 -m pip install --quiet --no-deps --no-build-isolation -e .
    python3 -m pip list 2>/dev/null | grep -i -E "^(torch|numpy|scipy|xarray|zarr|dask|abtem|onnxruntime) " \
        > "$out/versions.txt" || true
    nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
    python3 -c "import torch; print('cuda', torch.cuda.is_available(), torch.cuda.device_count())" \
        >> "$out/versions.txt"
    timeout 300 python3 -m pytest -q -p no:cacheprovider --timeout 240 \
        tests/test_train.py tests/test_infer_unet.py tests/test_infer_options.py \
        > "$out/pytest_gpu.txt" 2>&1 || true
    timeout 240 python3 bench/infer.py --device cuda --model models/fast-v1.pt --patterns 16384 --tag cuda \
        > "$out/infer_cuda.txt" 2>&1 || true
    cp bench/results/infer_cuda.json "$out/" 2>/dev/null || true
    tail -n 3 "$out/pytest_gpu.txt" "$out/infer_cuda.txt"
}

case "${1:-}" in
    wheels) wheels ;;
    run) run ;;
    *) echo "usage: bash bench/device_check.sh wheels|run (see the comment at its top)" >&2; exit 2 ;;
esac
