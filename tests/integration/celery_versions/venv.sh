#!/usr/bin/env bash
# venv.sh VERSION: prints the path of a virtualenv with the workers' Celery VERSION (VERSION.txt beside this script),
# built on first use with scripts/bootstrap.sh's build_venv (under a lock, cached below ~/.cache/celeryops-fleet,
# keyed by the text of VERSION.txt). Its `# python:` line names the Python versions to build it with, preferred first.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
req="$here/$1.txt"
[ -f "$req" ] || { echo "no requirements file $req" >&2; exit 2; }
# shellcheck source=scripts/bootstrap.sh
source "$here/../../../scripts/bootstrap.sh"
pythons="$(sed -n 's/^# python:[[:space:]]*//p' "$req")"
dir="$CELERYOPS_CACHE/venv-celery-$1-$(sha256sum "$req" | cut -c1-12)"
build_venv "$dir" "$pythons" -r "$req" >&2
echo "$dir"
