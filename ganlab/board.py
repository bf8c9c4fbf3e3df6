"""`ganlab board [DIR]`: TensorBoard on outputs/ (or a sweep or run dir), on a free local port.

TensorBoard's own server (tensorboard.program), in this process: the URL is printed once it listens, and
Ctrl-C (or SIGTERM) stops it cleanly. It binds 127.0.0.1 unless --host says otherwise (for a cluster node
reached through an ssh tunnel, 127.0.0.1 is still the right choice: `ssh -L 6006:127.0.0.1:PORT node`).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
from pathlib import Path

from ganlab.errors import GanlabError


def free_port(host: str) -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def event_files(root: Path) -> list[Path]:
    return sorted(root.rglob("events.out.tfevents.*"))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ganlab board", description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path, nargs="?", default=Path("outputs"),
                    help="outputs/ (default), a sweep dir or a run dir: every run below it is shown")
    ap.add_argument("--port", type=int, default=0, help="the port to listen on (default: a free one)")
    ap.add_argument("--host", default="127.0.0.1", help="the address to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--reload", type=int, default=10, metavar="S", help="seconds between re-reads of the event files")
    args = ap.parse_args(argv)
    root = args.dir.expanduser()
    if not root.is_dir():
        raise GanlabError(f"{root} is not a directory; give outputs/, a sweep dir or a run dir (ganlab board DIR).")
    if not event_files(root):
        raise GanlabError(f"no TensorBoard event files under {root}; train a run first (ganlab train ...) or point "
                          "ganlab board at a dir that holds runs.")
    if not 0 <= args.port < 65536:
        raise GanlabError(f"--port {args.port} is not valid: use 1..65535, or leave it out for a free port.")
    try:
        port = args.port or free_port(args.host)
    except OSError as exc:
        raise GanlabError(f"cannot listen on {args.host} ({exc.strerror or exc}); pass --host 127.0.0.1.") from None

    from tensorboard import program

    tb = program.TensorBoard()
    tb.configure(argv=[None, "--logdir", str(root.resolve()), "--host", args.host, "--port", str(port),
                       "--reload_interval", str(args.reload)])
    try:
        url = tb.launch()  # the server runs in a daemon thread
    except Exception as exc:  # TensorBoard's own error (port taken, bad flag)
        raise GanlabError(f"TensorBoard could not start on {args.host}:{port} ({exc}); try another --port.") from None
    print(f"TensorBoard on {root}: {url}  (Ctrl-C stops it)", flush=True)
    stop = threading.Event()
    # Ctrl-C and SIGTERM set the event: an explicit SIGINT handler also covers a parent that started us with
    # SIGINT ignored (Python then installs no KeyboardInterrupt handler of its own), and interrupts nothing midway
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    print("ganlab board: stopped", flush=True)
    sys.stderr.flush()
    # TensorBoard's server and reload threads may still hold a connection or a read (a browser's keep-alive, an
    # event file being loaded): the interpreter's exit would wait on them, so Ctrl-C ends the process here
    os._exit(0)
