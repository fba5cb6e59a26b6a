#!/usr/bin/env bash
# Fetches the real models and test photos from their packages, by exact
# version, checks their sha256, and exposes them under assets/ (git-ignored).
# Downloads are cached in ${XDG_CACHE_HOME:-$HOME/.cache}/facepool, so a
# second run (also from a fresh clone) costs nothing.
#
#   assets/models/fr_feature.onnx   face embedding (MobileFaceNet-style, 512-d)
#   assets/models/fr_detect.onnx    UltraFace RFB-320 face detector
#   assets/models/fr_landmark.onnx  68-point landmarks
#   assets/photos/johns/<person>/*.jpg  5 people x 11 aligned 150x150 chips
#   assets/photos/johns/pairs.csv   all 1485 pairs of them, labelled same (1) / different (0)
#   assets/photos/faces/*.jpg       full photos (bald_guys.jpg: a group)
#   assets/lib/libonnxruntime.so.1  ONNX Runtime 1.30.0 (Linux x86-64), for
#                                   the `ort` embedding backend
#
# Sources:
#   npm     faceplugin-face-recognition-js@0.0.1 (MIT)
#   npm     onnxruntime-node@1.30.0 (MIT), only its Linux x64 library
#   Debian  dlib 19.24+dfsg-1, dlib_19.24+dfsg.orig.tar.bz2, examples/ (public domain)
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/facepool"
OUT=assets
NPM_URL="https://registry.npmjs.org/faceplugin-face-recognition-js/-/faceplugin-face-recognition-js-0.0.1.tgz"
NPM_SHA=7ea06031d9a3f83753254fcff60506a07b81b46fc84d4ee024cd041f260ec1ba
ORT_URL="https://registry.npmjs.org/onnxruntime-node/-/onnxruntime-node-1.30.0.tgz"
ORT_SHA=6e3390d6b783e7be946fad629292799da28d0b42f84856e50d2c1b0383291e75
ORT_FILE=package/bin/napi-v6/linux/x64/libonnxruntime.so.1
ORT_LIB_SHA=ffb75a925ba05e47b235bb66e3e3911714a80b328a9c9425539feb204aa32a23
DLIB_URL="http://deb.debian.org/debian/pool/main/d/dlib/dlib_19.24+dfsg.orig.tar.bz2"
DLIB_SHA=66b4263822a2ff91a3e769e501c7d7927a13089e178c1427ec19cb0475823cf6

# file  sha256
MODELS="fr_feature.onnx 87aacdfe57510db2af90c0251df680e8eec88f122ee94712121d09bcaaaf3581
fr_detect.onnx 6c0256ccd3164f844736a401faf936ec2930764a87ae39442180887d0c5c8854
fr_landmark.onnx f10b0ba1d2a8a099adefede1ebf3733e44fe370715e7303dbeb7f59c02142258"

STAMP="$OUT/.fetched-v3"

say() { printf 'fetch-assets: %s\n' "$*" >&2; }

check() { # file sha256
    [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

models_ok() {
    while read -r f sum; do
        check "$OUT/models/$f" "$sum" || return 1
    done <<< "$MODELS"
}

if [ -f "$STAMP" ] && models_ok && check "$OUT/lib/libonnxruntime.so.1" "$ORT_LIB_SHA" \
    && [ -f "$OUT/photos/johns/pairs.csv" ] \
    && [ "$(find "$OUT/photos/johns" -name '*.jpg' | wc -l)" -eq 55 ]; then
    exit 0
fi

# download URL SHA256 DEST: fetch once into the cache, verify every time.
download() {
    local url=$1 sum=$2 dest=$3
    if ! check "$dest" "$sum"; then
        say "downloading $url"
        mkdir -p "$(dirname "$dest")"
        curl -fsSL --retry 3 -o "$dest.part" "$url"
        mv "$dest.part" "$dest"
    fi
    if ! check "$dest" "$sum"; then
        say "checksum mismatch for $dest (expected $sum); removing it"
        rm -f "$dest"
        exit 1
    fi
}

command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }
command -v bzip2 >/dev/null || { apt-get update -qq && apt-get install -y -qq bzip2; }

download "$NPM_URL" "$NPM_SHA" "$CACHE/faceplugin-face-recognition-js-0.0.1.tgz"
download "$DLIB_URL" "$DLIB_SHA" "$CACHE/dlib_19.24+dfsg.orig.tar.bz2"
# About 113 MB, of which one file is kept: the library is cached on its own,
# so later runs neither download nor unpack the tarball.
if ! check "$CACHE/libonnxruntime-1.30.0.so.1" "$ORT_LIB_SHA"; then
    download "$ORT_URL" "$ORT_SHA" "$CACHE/onnxruntime-node-1.30.0.tgz"
    ortdir=$(mktemp -d)
    tar -xzf "$CACHE/onnxruntime-node-1.30.0.tgz" -C "$ortdir" "$ORT_FILE"
    if ! check "$ortdir/$ORT_FILE" "$ORT_LIB_SHA"; then
        rm -rf "$ortdir"
        say "checksum mismatch for $ORT_FILE inside the npm package"
        exit 1
    fi
    mv "$ortdir/$ORT_FILE" "$CACHE/libonnxruntime-1.30.0.so.1"
    rm -rf "$ortdir" "$CACHE/onnxruntime-node-1.30.0.tgz"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

mkdir -p "$OUT/models" "$OUT/photos" "$OUT/lib"
cp "$CACHE/libonnxruntime-1.30.0.so.1" "$OUT/lib/libonnxruntime.so.1"
tar -xzf "$CACHE/faceplugin-face-recognition-js-0.0.1.tgz" -C "$tmp" \
    package/model/fr_feature.onnx package/model/fr_detect.onnx package/model/fr_landmark.onnx
while read -r f sum; do
    if ! check "$tmp/package/model/$f" "$sum"; then
        say "checksum mismatch for $f inside the npm package"
        exit 1
    fi
    cp "$tmp/package/model/$f" "$OUT/models/$f"
done <<< "$MODELS"

tar -xjf "$CACHE/dlib_19.24+dfsg.orig.tar.bz2" -C "$tmp" \
    dlib-19.24+dfsg/examples/johns dlib-19.24+dfsg/examples/faces
rm -rf "$OUT/photos/johns" "$OUT/photos/faces"
cp -r "$tmp/dlib-19.24+dfsg/examples/johns" "$OUT/photos/johns"
mkdir -p "$OUT/photos/faces"
cp "$tmp"/dlib-19.24+dfsg/examples/faces/*.jpg "$OUT/photos/faces/"

n=$(find "$OUT/photos/johns" -name '*.jpg' | wc -l)
if [ "$n" -ne 55 ]; then
    say "expected 55 labelled photos, found $n"
    exit 1
fi
# Every pair of the labelled photos, paths relative to the file.
(cd "$OUT/photos/johns" && find . -name '*.jpg' | sed 's|^\./||' | LC_ALL=C sort) > "$tmp/photos.txt"
awk -F/ '{ p[NR] = $0; who[NR] = $1 }
    END { for (i = 1; i <= NR; i++) for (j = i + 1; j <= NR; j++)
              printf "%s,%s,%d\n", p[i], p[j], (who[i] == who[j]) }' "$tmp/photos.txt" \
    > "$OUT/photos/johns/pairs.csv"
rm -f "$OUT"/.fetched-v*
touch "$STAMP"
say "assets ready under $OUT/"
