"""Shared by the llama.cpp reference scripts: run them under the cached
llama-cpp-python venv (built by llamacpp-venv.sh) and log to stderr."""

import importlib
import os
import subprocess
import sys

VENV_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llamacpp-venv.sh")


def reexec_under_venv(script, modules):
    """Returns if `modules` import here; otherwise re-executes `script` (with the
    same arguments) under the venv's python, building the venv if needed.

    exec replaces the process image, so the new process's VmHWM starts afresh."""
    try:
        for name in modules:
            importlib.import_module(name)
        return
    except ImportError:
        pass
    if os.environ.get("MOE_EDGE_REEXECED") == "1":
        sys.exit(f"error: {', '.join(modules)} still missing inside the venv")
    venv_python = subprocess.run(
        ["bash", VENV_SCRIPT], check=True, stdout=subprocess.PIPE, text=True
    ).stdout.strip().splitlines()[-1]
    os.environ["MOE_EDGE_REEXECED"] = "1"
    os.execv(venv_python, [venv_python, os.path.abspath(script), *sys.argv[1:]])


def log(msg):
    print(msg, file=sys.stderr, flush=True)
