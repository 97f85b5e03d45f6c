#!/usr/bin/env bash
# CI set-up, run by .ci/run before the tests (it changes the host's package configuration, so no test runs it):
# an aarch64 Python 3.11 with the numpy, onnxruntime, OpenCV, Pillow and pydantic (the settings' types)
# versions of constraints.txt, to run under qemu-aarch64 (tests/test_int8.py: the same inputs and logits on an
# emulated ARM CPU).
#   .ci/arm-sysroot.sh DIR CONSTRAINTS     (e.g. .ci/arm-sysroot.sh .arm-sysroot constraints.txt; needs root)
# Debian's arm64 packages give the interpreter (dpkg -x, no install), PyPI's manylinux aarch64 wheels the
# packages (unzipped, no pip run under emulation).
set -euo pipefail
dir=$1
constraints=$2
command -v qemu-aarch64 >/dev/null || { echo "qemu-aarch64 not installed (Debian: qemu-user)"; exit 1; }
command -v apt-get >/dev/null || { echo "no apt-get: the arm64 interpreter comes from Debian's packages"; exit 1; }
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
fi
apt-get update -qq >/dev/null
rm -rf "$dir.tmp" && mkdir -p "$dir.tmp/debs" "$dir.tmp/root" "$dir.tmp/site" "$dir.tmp/wheels"
(cd "$dir.tmp/debs" && apt-get download -qq python3.11-minimal:arm64 libpython3.11-minimal:arm64 \
    libpython3.11-stdlib:arm64 libc6:arm64 libexpat1:arm64 zlib1g:arm64 libffi8:arm64 libssl3:arm64 \
    libbz2-1.0:arm64 liblzma5:arm64 libgcc-s1:arm64 libstdc++6:arm64 libcrypt1:arm64 libuuid1:arm64 \
    libsqlite3-0:arm64 2>&1 | grep -v "^W: Download is performed unsandboxed" || true)
for d in "$dir.tmp"/debs/*.deb; do dpkg -x "$d" "$dir.tmp/root"; done
test -x "$dir.tmp/root/usr/bin/python3.11"
pins=$(grep -i -E '^(numpy|onnxruntime|opencv-python-headless|pillow|pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]extensions|typing[-_]inspection)==' "$constraints" | tr '\n' ' ')
test -n "$pins"
# shellcheck disable=SC2086
python3 -m pip download -q --only-binary=:all: --no-deps --python-version 3.11 --implementation cp \
    --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64 \
    --platform manylinux2014_aarch64 -d "$dir.tmp/wheels" $pins
for w in "$dir.tmp"/wheels/*.whl; do python3 -m zipfile -e "$w" "$dir.tmp/site"; done
echo "$pins" | tr ' ' '\n' | grep . | tr 'A-Z_' 'a-z-' | sort > "$dir.tmp/VERSIONS"
# qemu-user 7 shows the host's /proc/cpuinfo, which ONNX Runtime's CPU probe (cpuinfo) cannot parse as ARM:
# the test mounts this one over it (a Neoverse N1, the CPU it emulates) in a private mount namespace.
cat > "$dir.tmp/cpuinfo" <<'INFO'
processor	: 0
BogoMIPS	: 50.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x3
CPU part	: 0xd0c
CPU revision	: 1

INFO
rm -rf "$dir" && mv "$dir.tmp" "$dir"
echo "aarch64 sysroot ready in $dir: $pins"
