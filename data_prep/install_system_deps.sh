#!/bin/sh
# Install the offline text-to-speech engines and text sources the synthetic corpus uses,
# and the packages of real recordings that `flexispeech prepare realspeech` imports.
#   sh data_prep/install_system_deps.sh      (as root, on Debian/Ubuntu with apt)
# Idempotent: packages already installed are skipped. Not root, or no apt: prints what to
# install and exits 0 (the corpus builder skips missing engines with a warning).
# The MBROLA voices and SVOX pico live in Debian's contrib/non-free components; they are
# installed through a private sources list with its own lists/cache directories, so the
# system's apt configuration is never edited.
set -u

MAIN_PKGS="espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts fortunes fortunes-min wamerican"
# Real English speech with transcripts (data_prep/realspeech.py): Asterisk prompts, PocketSphinx test data
MAIN_PKGS="$MAIN_PKGS asterisk-core-sounds-en-wav asterisk-core-sounds-en pocketsphinx-testdata"
NONFREE_PKGS="mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1 mbrola-de2 mbrola-de4 mbrola-de5 libttspico-utils"

missing() {
    out=""
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || out="$out $p"
    done
    echo "$out"
}

if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-query >/dev/null 2>&1; then
    echo "system-deps: no apt here; install espeak-ng (and optionally flite, festival, mbrola, pico) by hand" >&2
    exit 0
fi
# shellcheck disable=SC2086
need_main=$(missing $MAIN_PKGS)
# shellcheck disable=SC2086
need_nonfree=$(missing $NONFREE_PKGS)
if [ -z "$need_main$need_nonfree" ]; then
    echo "system-deps: all speech engines already installed"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "system-deps: not root; to build the full synthetic corpus run as root:" >&2
    echo "  apt-get install$need_main  (and$need_nonfree from contrib/non-free)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive

if [ -n "$need_main" ]; then
    apt-get update -q || echo "system-deps: apt-get update failed; trying to install anyway" >&2
    # shellcheck disable=SC2086
    if ! apt-get install -y -q --no-install-recommends $need_main; then
        for p in $need_main; do  # one by one, so one missing package does not block the rest
            apt-get install -y -q --no-install-recommends "$p" || echo "system-deps: skipped $p" >&2
        done
    fi
fi

if [ -n "$need_nonfree" ]; then
    codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
    if [ -z "$codename" ] || ! grep -qi debian /etc/os-release; then
        echo "system-deps: not Debian; skipping$need_nonfree (MBROLA and pico voices are optional)" >&2
        exit 0
    fi
    # The mirror the system already uses (first deb URI of its sources), else Debian's default.
    mirror=$(grep -h -m1 -E '^URIs:.*/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 | awk '{print $2}')
    [ -n "$mirror" ] || mirror=$(grep -h -m1 -E '^deb .*/debian/? ' /etc/apt/sources.list 2>/dev/null | head -n1 | awk '{print $2}')
    [ -n "$mirror" ] || mirror="http://deb.debian.org/debian"
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    dir=/var/cache/flexispeech-apt
    mkdir -p "$dir/lists/partial" "$dir/archives/partial"
    echo "deb [signed-by=$keyring] $mirror $codename main contrib non-free" > "$dir/sources.list"
    set -- -o "Dir::Etc::sourcelist=$dir/sources.list" -o "Dir::Etc::sourceparts=-" \
        -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache::archives=$dir/archives"
    if apt-get "$@" update -q; then
        # shellcheck disable=SC2086
        if ! apt-get "$@" install -y -q --no-install-recommends $need_nonfree; then
            for p in $need_nonfree; do
                apt-get "$@" install -y -q --no-install-recommends "$p" || echo "system-deps: skipped $p" >&2
            done
        fi
    else
        echo "system-deps: cannot reach contrib/non-free; skipping$need_nonfree" >&2
    fi
fi
exit 0
