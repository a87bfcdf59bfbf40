"""A process that has imported ``carafe-exp`` once and forks a fresh CLI run per request (test helper).

Each ``carafe-exp`` process spends about 10 s of CPU importing torch, torchvision (torch._dynamo)
and Lightning (which imports torchmetrics, scipy and matplotlib) before it reads its arguments;
the test suite starts well over a hundred of them. This server imports those modules once; for
each request it forks a child that becomes the CLI run: its own process and pid, the request's
environment, working directory, argv and ``sys.path[0]`` as ``python -m carafe_exp.cli`` gives
them, stdin from /dev/null, stdout and stderr into files, then the console script's ``main()``
and the interpreter's normal exit (atexit handlers, thread joins, exit status).

Protocol (one request at a time), on the server's stdin and on the file descriptor given as its
argument: a JSON request ``{"args", "env", "cwd", "stdout", "stderr"}`` per line; the replies
``{"pid": N}`` once the child is started and ``{"pid": N, "returncode": R}`` when it has ended
(R negative for a signal, as ``subprocess`` reports it). EOF on stdin ends the server.

A DDP run's rank 0 is the forked child; Lightning starts the other ranks as
``python -m carafe_exp.cli`` processes from ``__main__.__spec__`` and ``sys.argv``, set here as that
command sets them. Runs that need a different interpreter set-up (PYTHONPATH, thread counts) are
started as plain subprocesses instead; ``helpers.run_cli`` decides.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import __main__


def _preload() -> None:
    # What every run imports before it does anything of its own.
    import carafe_exp.cli  # noqa: F401
    import carafe_exp.runs.loop  # noqa: F401
    import carafe_exp.models.build  # noqa: F401
    import carafe_exp.resample  # noqa: F401
    import torchvision.models.detection  # noqa: F401


def _become_the_run(request: dict) -> None:
    """In the forked child: set up the process as ``python -m carafe_exp.cli`` would be, then run it."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.path[0] = os.getcwd()
    import carafe_exp.cli

    # As `python -m carafe_exp.cli` sets them; Lightning's DDP launcher starts the other ranks
    # from __main__.__spec__ and sys.argv.
    __main__.__spec__ = importlib.util.find_spec("carafe_exp.cli")
    sys.argv = [carafe_exp.cli.__file__, *request["args"]]
    # SystemExit (sys.exit in the CLI) and any exception end the interpreter exactly as in a
    # fresh process: traceback on stderr and status 1, or the status given.
    carafe_exp.cli.main()


def serve(reply_fd: int) -> None:
    replies = os.fdopen(reply_fd, "w", buffering=1)
    _preload()
    replies.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            replies.close()
            _become_the_run(request)
            return  # main() returned: the child exits with status 0 through the normal shutdown
        replies.write(json.dumps({"pid": pid}) + "\n")
        _, status = os.waitpid(pid, 0)
        returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        replies.write(json.dumps({"pid": pid, "returncode": returncode}) + "\n")


if __name__ == "__main__":
    serve(int(sys.argv[1]))
