"""A fork server for the tests' `varbench` CLI calls: one process imports the heavy libraries
once, then forks a fresh child per command, so a test pays for `python -m varbench.cli`, not for
importing torch again (3-4 s per call on a quiet 2-core machine, 10 s under load).

The child is a new process running ``python -m varbench.cli ARGS`` through runpy with the
test's environment, working directory, stdout and stderr files: varbench itself, and everything
that reads the environment at import (huggingface_hub, diffusers, transformers, varbench.core.locks),
is imported afresh in the child. The preloaded libraries read some variables at import
(thread counts, HF_*, TRANSFORMERS_*): `conftest.run_cli` keeps one zygote per value of those
(``import_time_key``), started with the command's environment, so a child always sees what a
cold process with its environment would have seen.

Protocol (lines of JSON on stdin/stdout): request ``{"argv", "env", "cwd", "stdout", "stderr"}``;
replies ``{"pid": N}`` once the child exists, then ``{"returncode": N}`` when it has exited.
"""

from __future__ import annotations

import json
import os
import sys

# Preloaded: heavy. Nothing here may start a thread pool's work: the children fork from this
# state. diffusers, transformers and torch read HF_*, TRANSFORMERS_* and thread-count variables
# at import: conftest starts one zygote per value of those (``import_time_key``).
import diffusers  # noqa: F401
import numpy  # noqa: F401
import pandas  # noqa: F401
import PIL.Image  # noqa: F401
import pyarrow  # noqa: F401
import rich.console  # noqa: F401
import scipy.linalg  # noqa: F401
import scipy.optimize  # noqa: F401
import torch  # noqa: F401
import torch_fidelity  # noqa: F401
import torchvision  # noqa: F401
import transformers  # noqa: F401
import typer  # noqa: F401
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel  # noqa: F401
from transformers import CLIPTextModel, CLIPVisionModelWithProjection  # noqa: F401

BASE_PATH = list(sys.path)


def child(req: dict) -> None:
    """Become ``python -m varbench.cli ARGV`` with the request's env, cwd and output files.

    Signal handlers are inherited as a cold interpreter sets them (SIGINT raises
    KeyboardInterrupt, SIGPIPE ignored): the zygote never changes them.
    """
    import runpy
    import traceback

    os.environ.clear()
    os.environ.update(req["env"])
    extra = [p for p in req["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [*extra, *BASE_PATH]
    os.chdir(req["cwd"])
    fd_in = os.open(os.devnull, os.O_RDONLY)
    fd_out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    fd_err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd_in, 0)
    os.dup2(fd_out, 1)
    os.dup2(fd_err, 2)
    for fd in (fd_in, fd_out, fd_err):
        os.close(fd)
    sys.argv = [sys.executable, *req["argv"]]
    code = 0
    try:
        runpy.run_module("varbench.cli", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - report like the interpreter would, then exit 1
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main() -> None:
    reply = sys.stdout
    for line in sys.stdin:
        req = json.loads(line)
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            child(req)
        reply.write(json.dumps({"pid": pid}) + "\n")
        reply.flush()
        _, status = os.waitpid(pid, 0)
        reply.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        reply.flush()


if __name__ == "__main__":
    main()
