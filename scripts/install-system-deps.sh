#!/usr/bin/env bash
# Debian packages the test suite needs: a virtual screen for the GUI form test
# (xvfb, x11-apps for xwd, imagemagick to make a PNG) and a single-node SLURM
# queue (slurm-wlm, munge). Installs only what is missing; needs root (or sudo).
set -euo pipefail
missing=()
command -v Xvfb >/dev/null || missing+=(xvfb)
command -v xwd >/dev/null || missing+=(x11-apps)
convert -version 2>/dev/null | grep -q ImageMagick || missing+=(imagemagick)
command -v slurmctld >/dev/null || missing+=(slurm-wlm)
command -v munged >/dev/null || missing+=(munge)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
echo "installing Debian packages: ${missing[*]}"
$sudo_cmd apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
