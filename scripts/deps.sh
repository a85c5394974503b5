#!/usr/bin/env bash
# Installs the Debian 12 packages liege needs to build and test, and nothing when all are there.
# Usage: scripts/deps.sh [--bench]   (--bench adds wrk, curl, nginx, haproxy, liburing, h2load and slowhttptest for bench/)
set -euo pipefail
packages=(build-essential cmake pkg-config python3 libuv1-dev node-llhttp libtomlplusplus-dev
          libspdlog-dev libfmt-dev nlohmann-json3-dev libcli11-dev libgtest-dev
          uwsgi uwsgi-plugin-python3 gunicorn python3-flask
          libssl-dev libcurl4-openssl-dev openssl curl pebble clang libfuzzer-14-dev)
if [[ "${1:-}" == "--bench" ]]; then
    packages+=(wrk curl nginx-light haproxy procps util-linux liburing-dev nghttp2-client slowhttptest)
fi
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "installing: ${missing[*]}" >&2
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
