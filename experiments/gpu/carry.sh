#!/usr/bin/env bash
# Fill device_carry/ (git-ignored) with what a device run needs: ../shared/data/prepare.py and the archives
# of one experiment. The device tool carries at most 64 MiB per call, tree included, and all four archives
# together are 68 MB, so each run carries only its own:
#     bash experiments/gpu/carry.sh cifar10          # CIFAR-10 + Tiny-ImageNet test + MNIST, 41 MB
#     bash experiments/gpu/carry.sh gpu_check        # CIFAR-10 + Tiny-ImageNet test, 32 MB
#     bash experiments/gpu/carry.sh dirty_mnist      # MNIST + Fashion-MNIST, 35 MB
#     bash experiments/gpu/carry.sh active_learning  # MNIST, 9 MB
# SOURCE=folder overrides ../shared/data.
set -euo pipefail
case "${1:-}" in
cifar10) archives="cifar10-jpeg.tar.xz tiny-imagenet-test.tar.xz mnist.tar.xz" ;;
gpu_check) archives="cifar10-jpeg.tar.xz tiny-imagenet-test.tar.xz" ;;
dirty_mnist) archives="mnist.tar.xz fashion-mnist.tar.xz" ;;
active_learning) archives="mnist.tar.xz" ;;
*)
    echo "usage: bash experiments/gpu/carry.sh cifar10|dirty_mnist|active_learning|gpu_check" >&2
    exit 2
    ;;
esac
cd "$(dirname "$0")/../.."
SOURCE=${SOURCE:-../shared/data}
rm -rf device_carry
mkdir -p device_carry
cp "$SOURCE/prepare.py" device_carry/
for archive in $archives; do
    cp "$SOURCE/$archive" device_carry/
done
du -sh device_carry
