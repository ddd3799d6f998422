#!/usr/bin/env bash
# Install, from the distribution's packages, what code execution needs: bubblewrap (the sandbox of every
# generated program) and the toolchains of the five HumanEval-X languages (g++ with the Boost and OpenSSL
# headers the problems include, a JDK, Node.js, Go). Debian/Ubuntu (apt-get); run as root or with sudo.
# Only what is missing is installed, so it is quick to run again. `.ci/run` runs it; for your own machine
# it is the optional part of the set-up (`bash scripts/setup_toolchains.sh`, or `--sandbox-only`).
set -euo pipefail

# tool or header that says the package is there -> the Debian package
wanted=("bwrap:bubblewrap" "setpriv:util-linux")
if [ "${1:-}" != "--sandbox-only" ]; then
    wanted+=("g++:g++" "/usr/include/boost/any.hpp:libboost-dev" "/usr/include/openssl/md5.h:libssl-dev"
             "javac:default-jdk-headless" "node:nodejs" "go:golang-go")
fi
missing=()
for entry in "${wanted[@]}"; do
    probe="${entry%%:*}" package="${entry#*:}"
    if [[ "$probe" == /* ]]; then [ -e "$probe" ] && continue; else command -v "$probe" >/dev/null 2>&1 && continue; fi
    missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "[toolchains] everything is installed" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "[toolchains] missing: ${missing[*]}; no apt-get here: install them with your package manager" >&2
    exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "[toolchains] missing: ${missing[*]}; run as root (no sudo here)" >&2; exit 1; }
    sudo=(sudo)
fi
echo "[toolchains] installing: ${missing[*]}" >&2
"${sudo[@]}" apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
