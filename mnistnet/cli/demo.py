"""``mnistnet demo``: serve the draw-a-digit page for a saved model."""

from __future__ import annotations

import argparse

from mnistnet.cli.common import (
    EXIT_INTERRUPTED,
    add_backend,
    dataset_name,
    load_model,
    name_classes,
)
from mnistnet.demo import LOOPBACK_HOSTS, serve

NAME = "demo"
HELP = "serve a page to draw digits (or the model's classes) on and watch the model read them"
DESCRIPTION = ("Serve a page to draw a digit on (mouse, pen or touch; for a model of another "
               "dataset, one of its classes) and watch the model read it: the 28x28 image it "
               "gets and its outputs, one bar per class, live. Serves until Ctrl-C.")


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a port number (0..65535): {text!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``mnistnet demo`` to ``parser`` (the CLI's subparser)."""
    parser.add_argument("model", metavar="MODEL.npz", help="a model written by 'train --save'")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s, this machine only)")
    parser.add_argument("--port", type=_port, default=8000,
                        help="port to listen on; 0: any free port (default: %(default)s)")
    parser.add_argument("--dataset", metavar="NAME", type=dataset_name,
                        help="whose class names to show, for a model file saved without them "
                             "(older ones: its outputs are then named 0, 1, ...)")
    add_backend(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Serve the page for the model until Ctrl-C (exit code 130)."""
    model = load_model(args.model, args.backend)
    name_classes(model, args.dataset)
    try:
        server = serve(model, args.host, args.port)
    except OSError as exc:  # the port in use, an unknown host name, ...
        raise OSError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") \
            from None
    try:
        if args.host not in LOOPBACK_HOSTS:
            server.say(f"listening on {args.host}: anyone who can reach this machine can "
                       "use the page")
        print(f"mnistnet demo: {args.model} at {server.url} (Ctrl-C to stop)", flush=True)
        server.wait()
    except KeyboardInterrupt:
        server.say("stopped")
        return EXIT_INTERRUPTED
    finally:
        server.close()
    return 0
