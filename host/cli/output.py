"""What the host CLI writes where: results on stdout, progress and our warnings on stderr, and the
libraries' chatter nowhere (or on stderr with ``-v``).

Converters and quantizers print to stdout from Python (``print``) and from C++ (straight to file
descriptors 1 and 2), and absl, torchao and triton log on import. :func:`library_chatter` moves
both descriptors and ``sys.stdout`` away from the terminal while a command works, so ``--json``
output on stdout is JSON alone; ``sys.stderr`` stays the real stderr, so progress bars and our own
log lines still show.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console

# Loggers of libraries that announce optional kernels, deprecated APIs and the like at INFO or
# WARNING on every run; shown with -v.
CHATTY_LOGGERS = (
    "absl",
    "torchao",
    "triton",
    "torch",
    "litert_torch",
    "ai_edge_litert",
    "ai_edge_quantizer",
    "tensorflow",
    "onnxruntime",
    "onnxscript",
    "jax",
)
# Read by TensorFlow/TFLite, glog, absl's C++ logging and torch's log setup when they load: quiet
# unless -v (torch re-levels its own loggers on import, so setting them here would not last).
QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "GLOG_minloglevel": "3",
    "ABSL_MIN_LOG_LEVEL": "3",
    "TORCH_LOGS": "-all",
}

_state = {"verbose": False}


class _CurrentStderr:
    """A stream that writes to whatever ``sys.stderr`` is at the time (see library_chatter)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def verbose() -> bool:
    return _state["verbose"]


def configure(verbose_mode: bool) -> None:
    """Logging for a CLI run: our warnings always, the libraries' only with -v."""
    _state["verbose"] = verbose_mode
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_edgetailor", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(_CurrentStderr())  # type: ignore[arg-type]
    handler._edgetailor = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose_mode else logging.WARNING)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose_mode else logging.ERROR)
    if not verbose_mode:
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
        warnings.filterwarnings("ignore")
        for package in ("host", "shared", "device_agent"):
            warnings.filterwarnings("default", module=rf"{package}(\.|$)")
    else:
        warnings.resetwarnings()


@contextmanager
def library_chatter(verbose_mode: bool | None = None) -> Iterator[TextIO]:
    """While the block runs, what libraries write to stdout goes to stderr (``-v``) or nowhere.

    File descriptor 1 is redirected, so C++ output follows too; without -v descriptor 2 is
    silenced as well, while ``sys.stderr`` keeps writing to the real stderr for progress and logs.
    The block gets the real stdout, for output that must appear while it runs (the demo prints
    its tables before it serves the dashboard until Ctrl-C).
    """
    loud = verbose() if verbose_mode is None else verbose_mode
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    sink_fd = os.dup(saved_err) if loud else os.open(os.devnull, os.O_WRONLY)
    real_err: TextIO = os.fdopen(os.dup(saved_err), "w", buffering=1, encoding="utf-8")
    real_out: TextIO = os.fdopen(os.dup(saved_out), "w", buffering=1, encoding="utf-8")
    sink: TextIO = os.fdopen(os.dup(sink_fd), "w", buffering=1, encoding="utf-8")
    old_out, old_err = sys.stdout, sys.stderr
    os.dup2(sink_fd, 1)
    if not loud:
        os.dup2(sink_fd, 2)
    sys.stdout = sink
    # A stderr that is not descriptor 2 (a test's capture) is not affected by the redirect.
    sys.stderr = real_err if _fileno(old_err) == 2 else old_err
    try:
        yield real_out
    finally:
        for stream in (sys.stdout, sys.stderr, real_out):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        sys.stdout, sys.stderr = old_out, old_err
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for fd in (saved_out, saved_err, sink_fd):
            os.close(fd)
        sink.close()
        real_err.close()
        real_out.close()


PIPE_WIDTH = 1_000  # columns: wider than any table the CLI prints, so none wraps in a pipe


def wide_console(file: TextIO | None = None) -> Console:
    """stdout (or ``file``). Not a terminal: tables at their natural width and lines unwrapped, so
    each row of a piped table is one line (a pipe has no width to fit)."""
    console = Console(file=file)
    if console.is_terminal:
        return console
    return Console(file=file, width=PIPE_WIDTH, soft_wrap=True)


def _fileno(stream: TextIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def one_line(error: BaseException) -> str:
    """An error message on one line (user code and runtimes raise multi-line ones)."""
    text = " ".join(str(error).split())
    return text or type(error).__name__
