#!/bin/sh
# Regenerates the qcow2 fixtures in this directory with qemu-img and
# qemu-io (Debian: apt-get install qemu-utils), and their golden files:
#   NAME.sha256    sha256 of `qemu-img convert -O raw NAME`
#   NAME.map.json  `qemu-img map --output=json NAME`
# Images use 4 KiB clusters to stay small. Run from anywhere:
#   sh testdata/gen.sh
set -eu
cd "$(dirname "$0")"
rm -rf chain qcow2
mkdir -p chain qcow2

q() { qemu-io -f qcow2 "$@" >/dev/null; }

# A three-image chain with relative backing names (top -> mid -> base),
# used by the README quick start. mid is larger than base, top larger
# than mid; mid has an internal snapshot.
qemu-img create -q -f qcow2 -o cluster_size=4096 chain/base.qcow2 1M
q -c 'write -P 0xb0 0 16k' -c 'write -P 0xb1 512k 8k' chain/base.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4096 -b base.qcow2 -F qcow2 chain/mid.qcow2 2M
q -c 'write -P 0x10 24k 8k' -c 'write -z 32k 4k' -c 'write -P 0x11 1536k 8k' chain/mid.qcow2
qemu-img snapshot -c before-top chain/mid.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4096 -b mid.qcow2 -F qcow2 chain/top.qcow2 3M
q -c 'write -P 0x70 28k 8k' -c 'write -P 0x71 2560k 4k' -c 'write -z 0 4k' chain/top.qcow2

# Compressed images, one per compression type.
qemu-img create -q -f qcow2 -o cluster_size=4096 qcow2/src.qcow2 512k
q -c 'write -P 0x41 0 32k' -c 'write -P 0x42 200k 4k' -c 'write -z 300k 64k' qcow2/src.qcow2
qemu-img convert -c -O qcow2 -o cluster_size=4096,compression_type=zlib qcow2/src.qcow2 qcow2/zlib.qcow2
qemu-img convert -c -O qcow2 -o cluster_size=4096,compression_type=zstd qcow2/src.qcow2 qcow2/zstd.qcow2
rm qcow2/src.qcow2

# A version 2 (compat=0.10) image.
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=4096 qcow2/v2.qcow2 256k
q -c 'write -P 0x22 4k 8k' -c 'write -P 0x23 100k 1k' qcow2/v2.qcow2

# Make every file fully allocated, as a git checkout is, so that QEMU's
# metadata-preallocation heuristic sees the same thing here and there.
for f in chain/*.qcow2 qcow2/*.qcow2; do
  cp --sparse=never "$f" "$f.tmp" && mv "$f.tmp" "$f"
done
for f in chain/*.qcow2 qcow2/*.qcow2; do
  qemu-img convert -O raw "$f" golden.tmp
  sha256sum golden.tmp | cut -d' ' -f1 > "$f.sha256"
  rm golden.tmp
  qemu-img map --output=json "$f" > "$f.map.json"
done
du -sh --apparent-size .
