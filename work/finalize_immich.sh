#!/usr/bin/env bash
# The original tool's last step, as users know it: `bash work/finalize_immich.sh nic` (or `make finalize USER=nic`).
# Runs `facesets finalize --user nic` (embed -> cluster -> export -> load, resuming where it stopped); more
# options of `facesets finalize` may follow the user. EMBED, WIN_ROOT and WIN_PYTHON choose the Windows side;
# EMBED=dask with DASK_SCHEDULER=tcp://host:8786 embeds on Dask workers.
set -euo pipefail
if [ $# -lt 1 ] || [ -z "$1" ]; then
    echo "usage: bash work/finalize_immich.sh USER [options of facesets finalize]" >&2
    exit 2
fi
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"
user="$1"
shift
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m facesets finalize --user "$user" "$@"
