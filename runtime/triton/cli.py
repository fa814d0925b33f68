"""`python -m runtime triton ENGINE_DIR`: write the engine's Triton model repository (ENGINE_DIR/triton/).

    --launch    then start the tritonserver bundled in nvidia-pytriton on it (CPU, python backend), in its
                own environment (.venv-triton, created on first use), until Ctrl-C, SIGTERM or SIGHUP (what
                systemd, `docker stop` and `timeout` send, and a closed terminal): each stops the server too
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Sequence

from ..arguments import Parser, add_device_arguments, command
from .repository import VISION_PLATFORMS, TritonOptions, validate_config, write_repository


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = Parser(prog=command("triton"),
               description="Write a Triton Inference Server model repository for an engine directory.")
    p.add_argument("engine_dir", type=Path, help="engine directory written by build.py")
    p.add_argument("--force", action="store_true", help="replace an existing ENGINE_DIR/triton")
    p.add_argument("--max-batch", type=int, default=4, help="requests decoded together (default: 4)")
    add_device_arguments(p)
    p.add_argument("--vision-platform", choices=VISION_PLATFORMS, default="python",
                   help="python (the runtime's vision engine, default), or Triton's own onnxruntime_onnx / "
                        "tensorrt_plan (GPU servers with those backends)")
    p.add_argument("--vision-instances", type=int, default=1, help="instances of the vision model (default: 1)")
    p.add_argument("--max-queue", type=int, default=32, help="requests waiting for a decoder slot (default: 32)")
    p.add_argument("--max-new-tokens", type=int, default=512, metavar="N",
                   help="most new tokens per request, and what a request that does not say gets (default: 512)")
    p.add_argument("--max-tokens", type=int, dest="max_new_tokens", default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # the earlier spelling
    p.add_argument("--request-timeout", type=float, default=120.0, help="seconds per request (default: 120)")
    g = p.add_argument_group("running it here (CPU)")
    g.add_argument("--launch", action="store_true", help="start tritonserver on the repository until Ctrl-C")
    g.add_argument("--host", default="127.0.0.1", help="address tritonserver listens on (default: loopback only)")
    g.add_argument("--http-port", type=int, default=8000, help="tritonserver's HTTP/REST port")
    g.add_argument("--grpc-port", type=int, default=8001, help="tritonserver's gRPC port")
    g.add_argument("--metrics-port", type=int, default=8002, help="tritonserver's Prometheus metrics port")
    g.add_argument("--env", type=Path, help="the Triton environment's directory (default: .venv-triton)")
    args = p.parse_args(argv)
    for name in ("max_batch", "vision_instances", "max_queue", "max_new_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.launch and args.vision_platform != "python":
        p.error("--launch runs the tritonserver bundled in nvidia-pytriton, which has only the python backend; "
                "use --vision-platform python")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    options = TritonOptions(max_batch=args.max_batch, device=args.device, threads=args.threads,
                            vision_platform=args.vision_platform, vision_instances=args.vision_instances,
                            max_queue=args.max_queue, max_tokens=args.max_new_tokens, request_timeout=args.request_timeout)
    root = write_repository(args.engine_dir, options, force=args.force)
    checked = validate_config((root / "aerie" / "config.pbtxt").read_text(), "aerie")
    print(f"wrote {root} (aerie, aerie_stream, aerie_vision/{args.vision_platform}); "
          + ("configs checked against Triton's ModelConfig schema" if checked else
             "configs not schema-checked: install tritonclient[grpc] to check them"), flush=True)
    if not args.launch:
        print(f"serve it with: tritonserver --model-repository={root.resolve()}  (or add --launch here)")
        return 0
    from .environment import ensure_environment
    from .launch import TritonServer

    server = TritonServer(ensure_environment(args.env), root, args.host, args.http_port, args.grpc_port,
                          args.metrics_port)

    def stop(signum, frame):
        raise KeyboardInterrupt

    for signum in (signal.SIGTERM, signal.SIGHUP):  # as Ctrl-C: the finally below stops the server
        signal.signal(signum, stop)
    print(f"starting tritonserver (log: {server.log_path})", file=sys.stderr, flush=True)
    try:
        server.start()
        print(f"tritonserver ready: HTTP {server.http_url}, gRPC {server.grpc_url}, "
              f"metrics {args.host}:{server.metrics_port}; Ctrl-C stops", file=sys.stderr, flush=True)
        while server.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second signal must not cut the stop short
            signal.signal(signum, signal.SIG_IGN)
        server.stop()
    print("stopped", file=sys.stderr, flush=True)
    return 0
