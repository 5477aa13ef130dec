#!/usr/bin/env bash
# Build the wheel and use it as a user would (`make wheel-check`, run by .ci/run): a fresh venv outside
# the repository, torch==2.13.0 first (an unpinned torch pulls the CUDA build), then the wheel; a small US
# phantom is generated and detected from a working folder outside the repository. Fails when the wheel is
# 30 MB or more, lacks a package file or the shipped models and configs, or a command fails or writes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
MAX_BYTES=$((30 * 1024 * 1024))
unset PYTHONPATH
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
step() { echo "check_wheel [$((SECONDS - start)) s]: $*"; }

step "copying the files git knows (no stale build/ or egg-info in the wheel)"
mkdir "$tmp/src"
git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do if [ -f "$f" ]; then printf '%s\0' "$f"; fi; done |
  tar --null -T - -cf - | tar -xf - -C "$tmp/src"

step "building the wheel"
"$PYTHON" -m pip wheel -q --no-deps --wheel-dir "$tmp/dist" "$tmp/src"
wheel=$(echo "$tmp"/dist/backmice_vision-*.whl)
size=$(stat -c %s "$wheel")
step "$(basename "$wheel"): $((size / 1024)) KiB"
if [ "$size" -ge "$MAX_BYTES" ]; then
  echo "check_wheel: the wheel is $((size / 1024 / 1024)) MB, the limit is 30 MB" >&2
  exit 1
fi
"$PYTHON" - "$wheel" "$tmp/src" <<'EOF'
import sys
import zipfile
from pathlib import Path

wheel, src = sys.argv[1], Path(sys.argv[2])


def files(folder: Path, prefix: str) -> set[str]:
    return {f"{prefix}/{p.relative_to(folder).as_posix()}" for p in folder.rglob("*") if p.is_file()}


names = set(zipfile.ZipFile(wheel).namelist())
want = files(src / "backmice_vision", "backmice_vision") | files(src / "models", "backmice_vision/models")
want |= {f"backmice_vision/configs/{n}" for n in ("__init__.py", "inference.yaml", "phantom_us.yaml", "phantom_mr.yaml")}
missing = sorted(want - names)
stray = sorted(n for n in names if not n.startswith(("backmice_vision/", "backmice_vision-")))
for n in missing:
    print(f"check_wheel: not in the wheel: {n} (pyproject.toml packages / package-data)", file=sys.stderr)
for n in stray:
    print(f"check_wheel: outside the package in the wheel: {n}", file=sys.stderr)
sys.exit(1 if missing or stray else 0)
EOF

step "installing torch==2.13.0, then the wheel, into a fresh venv (no .pyc: half the time)"
"$PYTHON" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --no-compile torch==2.13.0
"$tmp/venv/bin/python" -m pip install -q --no-compile "$wheel"

mkdir "$tmp/work"
cd "$tmp/work"
bm="$tmp/venv/bin/backmice"
"$tmp/venv/bin/python" - "$tmp/venv" <<'EOF'
import sys
from pathlib import Path

import backmice_vision
from backmice_vision.resources import config_path, models_dir

venv = Path(sys.argv[1]).resolve()
for path in (Path(backmice_vision.__file__), models_dir() / "backmice_us", config_path("inference.yaml")):
    if not path.resolve().is_relative_to(venv) or not path.exists():
        sys.exit(f"check_wheel: {path} is not installed in {venv}")
EOF
"$bm" --help >/dev/null

step "backmice phantom (one small US case)"
cat >phantom.yaml <<'EOF'
anatomy: {force_nodules: 1}
single_series: [1, 1]
images_per_series: [1, 1]
cine_frames: [3, 3]
p_dual: 0.0
EOF
"$bm" phantom --modality us --cases 1 --seed 3 --config phantom.yaml --out phantom --quiet
series=$(find phantom -path '*/dicom/*' -name '*.dcm' | sort | head -n 1)
if [ -z "$series" ]; then
  echo "check_wheel: backmice phantom wrote no DICOM file" >&2
  exit 1
fi

step "backmice detect $series"
"$bm" detect "$series" --out result
for f in report.json seg.dcm; do
  if [ ! -s "result/$f" ]; then
    echo "check_wheel: backmice detect wrote no result/$f" >&2
    exit 1
  fi
done
step "passed"
