"""A warm Python for the tests' training runs: imports torch, transformers, Axolotl and this
package once, then forks one child per run.

A tiny `axolotl train` spends about four fifths of its CPU time importing (torch, transformers,
Axolotl's loaders, sklearn through transformers' generation utilities): some 35 s of CPU per
process on a CI core, against a few seconds of training. Each child here is a fresh copy of a
process that has imported everything and run nothing, so a run starts where a new process would
be after its imports, isolated from every other run (its own memory, environment, working
directory, process group and log file). Single-threaded until it forks: nothing here starts a
thread or an OpenMP pool, so the children start clean.

Protocol, one JSON object per line. In: {"argv": [script, *args], "cwd", "env", "log"}; out:
{"pid": N} when the child starts, {"pid": N, "returncode": R} when it ends (R < 0: killed by
signal -R, as subprocess reports it). The conftest's `WarmPython` is the client.
"""

from __future__ import annotations

import json
import os
import runpy
import select
import sys
import traceback

# The modules a tiny self-play or SFT run imports, heaviest first; each is optional so that a
# module one Axolotl version lacks does not stop the other.
PRELOAD = [
    "torch",
    "transformers",
    "transformers.generation.utils",
    "transformers.models.auto.modeling_auto",
    "transformers.models.llama.modeling_llama",
    "datasets",
    "accelerate",
    "peft",
    "trl",
    "axolotl.cli.train",
    "axolotl.train",
    "axolotl.core.builders",
    "axolotl.utils.data",
    "axolotl.loaders",
    "torch.utils.tensorboard",
    "axolotl_selfplay.plugin",
    "axolotl_selfplay.spin.trainer",
    "axolotl_selfplay.lsp.trainer",
]


def preload() -> None:
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass


def run_child(request: dict) -> None:
    """In the forked child: become the run (never returns)."""
    code = 1
    try:
        os.setpgid(0, 0)  # its own process group: a run that kills its group (--kill-at) spares us
        os.close(PROTOCOL_FD)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        sys.argv = list(request["argv"])
        # as `python script.py` does: the script's folder first on sys.path
        sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
        runpy.run_path(sys.argv[0], run_name="__main__")
        code = 0
    except SystemExit as stop:
        if stop.code is None:
            code = 0
        elif isinstance(stop.code, int):
            code = stop.code
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


# The replies' own file descriptor: whatever an import prints goes to stderr, never into a reply.
PROTOCOL_FD = os.dup(1)
os.dup2(2, 1)


def reply(message: dict) -> None:
    os.write(PROTOCOL_FD, (json.dumps(message) + "\n").encode())


def main() -> None:
    preload()
    reply({"ready": True})
    stdin = sys.stdin.buffer
    pending = b""
    while True:
        readable, _, _ = select.select([stdin], [], [], 0.2)
        if readable:
            chunk = os.read(stdin.fileno(), 65536)
            if not chunk:
                return  # the client has gone: its children are its own process groups, left to finish
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    run_child(request)
                reply({"pid": pid})
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            reply({"pid": pid, "returncode": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    main()
