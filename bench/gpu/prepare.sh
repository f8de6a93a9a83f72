#!/usr/bin/env bash
# Run HERE (the CPU machine, with the registries reachable) before the device check: fills the two git-ignored
# folders the device call carries.
#   .whl/         wheels for Python 3.12 / manylinux x86-64 of what the GPU image lacks, or has at a version the
#                 project cannot use (typing_extensions >= 4.16 for pydantic 2.14; pandas < 3 for anndata); it has
#                 torch, numpy, scipy, h5py, torch-geometric, safetensors, tensorboard, accelerate, pytest, ...;
#                 deepspeed as the pure-Python wheel `pip wheel --no-deps` builds here.
#   .gpu/counts/  the real count matrices of ../shared/data/counts (the device gets only the repository).
# Then, with the device tool:  run(command="bash bench/gpu/check.sh", carry=[".whl", ".gpu"], timeout_s=360)
# (.whl ~33 MB + .gpu ~23 MB + the repository: under the 64 MiB a call may carry)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
grep -qxF '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl .gpu
# Versions as installed here (the CPU CI image), so both machines run the same library code.
PKGS="hjson pydantic pydantic-core annotated-types typing-inspection anndata array-api-compat natsort
legacy-api-wrap scverse-misc session-info2 zarr zarrs numcodecs donfig google-crc32c webdataset braceexpand
typing_extensions pandas"
SPECS=$($PY -m pip freeze | $PY -c "
import sys
want = {p.lower().replace('_', '-') for p in '''$PKGS'''.split()}
for line in sys.stdin:
    name, _, version = line.strip().partition('==')
    if name.lower().replace('_', '-') in want:
        print(f'{name}=={version}')
")
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64 --platform any"
# shellcheck disable=SC2086
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS -d .whl $SPECS
$PY -m pip wheel -q --no-deps "deepspeed==$($PY -m pip show deepspeed | sed -n 's/^Version: //p')" -w .whl
rm -rf .gpu/counts && cp -r ../shared/data/counts .gpu/counts && chmod -R u+w .gpu/counts
du -sh .whl .gpu
ls .whl
