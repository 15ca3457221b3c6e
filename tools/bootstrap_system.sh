#!/usr/bin/env bash
# System packages needed on a bare Debian machine: Python 3.11 with venv, Mesa EGL for
# headless MuJoCo rendering, and cmake + a C++ compiler to generate interbotix_xs_msgs.
# Installs only what is missing; needs root (or sudo) only then.
set -euo pipefail
needed=(libegl1 libegl-mesa0 libgl1-mesa-dri libgl1 cmake g++ make)
missing=()
for pkg in "${needed[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
command -v python3.11 >/dev/null 2>&1 || missing+=(python3.11 python3.11-venv)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "bootstrap: installing system packages: ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
