"""Builds this function into a wasi:http component: `python3 build.py` (the [build] command of
nimbus.toml). Written by `nimbus new`; yours to change.

componentize-py, pinned below, is installed on first use into a cache shared by your functions
($NIMBUS_TOOLS_DIR, else $XDG_CACHE_HOME/nimbus/tools, else ~/.cache/nimbus/tools), never
globally. Output: build/{{name}}.wasm.
"""

import os
import subprocess
import sys
from pathlib import Path

COMPONENTIZE_PY_VERSION = "{{componentize_py_version}}"

root = Path(__file__).resolve().parent
cache = os.environ.get("NIMBUS_TOOLS_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nimbus", "tools"
)
tools = Path(cache) / f"componentize-py-{COMPONENTIZE_PY_VERSION}"

if not (tools / "componentize_py").is_dir():
    print(f"build: installing componentize-py=={COMPONENTIZE_PY_VERSION} into {tools}", file=sys.stderr)
    tmp = tools.with_name(f"{tools.name}.tmp.{os.getpid()}")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--target", str(tmp), f"componentize-py=={COMPONENTIZE_PY_VERSION}"],
        check=True, stdout=sys.stderr,
    )
    try:
        os.replace(tmp, tools)
    except OSError:
        # Another build installed it at the same time.
        subprocess.run([sys.executable, "-c", "import shutil,sys; shutil.rmtree(sys.argv[1])", str(tmp)])

out = root / "build" / "{{name}}.wasm"
out.parent.mkdir(exist_ok=True)
tmp_out = out.with_suffix(".wasm.tmp")
run = "import sys; from componentize_py import script; sys.argv[0] = 'componentize-py'; sys.exit(script())"
env = dict(os.environ, PYTHONPATH=str(tools))
status = subprocess.run(
    [sys.executable, "-c", run, "--quiet", "-d", "wit", "-w", "proxy",
     "componentize", "-p", "src", "app", "-o", str(tmp_out)],
    cwd=root, env=env, stdout=sys.stderr,
).returncode
if status != 0:
    sys.exit(status)
os.replace(tmp_out, out)
print(f"build: {out} ({out.stat().st_size} bytes)", file=sys.stderr)
