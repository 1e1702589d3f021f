"""`vla serve`: serve a policy checkpoint over websockets (openpi wire protocol, robots/server.py).

    vla serve --policy outputs/ckpt [--host 127.0.0.1] [--port 8000] [--token T]
              [--max-message-bytes N] [--n-action-steps N] [--device cpu] [--token-budget B]

Binds to loopback unless told otherwise. The token can also come from the environment variable
VLA_SERVE_TOKEN (a command line is visible to every user of the machine in `ps`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from robots.server import DEFAULT_MAX_MESSAGE_BYTES

TOKEN_ENV = "VLA_SERVE_TOKEN"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="Serve a policy over websockets (openpi wire protocol).",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--policy", required=True, help="checkpoint directory (VLAPolicy.from_checkpoint)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (0: let the OS choose)")
    parser.add_argument(
        "--token", default=os.environ.get(TOKEN_ENV),
        help=f"shared secret clients must send as 'Authorization: Api-Key <token>' (default: ${TOKEN_ENV})",
    )
    parser.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                        help="largest request accepted; larger ones close the connection (code 1009)")
    parser.add_argument("--n-action-steps", type=int, default=None,
                        help="reply with only the first N actions of each chunk (default: whole chunk)")
    parser.add_argument("--device", default="cpu", help="torch device for the policy (cpu, cuda, cuda:1)")
    parser.add_argument("--token-budget", type=float, default=None, metavar="B",
                        help="stage-2 routing keep budget in (0, 1] (default: the checkpoint's floor); "
                             "sent to clients in the metadata")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robots.server import PolicyServer, ServerConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Validate the server config before spending seconds loading a model.
    config = ServerConfig(
        host=args.host, port=args.port, token=args.token,
        max_message_bytes=args.max_message_bytes, n_action_steps=args.n_action_steps,
    )
    if config.host not in LOOPBACK and config.token is None:
        print(
            f"vla serve: warning: listening on {config.host} without a token; anyone who can reach "
            f"this port can drive the policy (set --token or ${TOKEN_ENV})",
            file=sys.stderr,
        )
    if args.token_budget is not None and not 0.0 < args.token_budget <= 1.0:
        print(f"vla serve: error: --token-budget {args.token_budget}: expected a number in (0, 1]",
              file=sys.stderr)
        return 2
    from policies.vla_policy import VLAPolicy  # heavy (torch): only once the arguments are sane

    try:
        policy = VLAPolicy.from_checkpoint(args.policy, device=args.device, token_budget=args.token_budget)
    except ValueError as error:  # a checkpoint without stage 2 given a budget, a bad checkpoint
        print(f"vla serve: error: {error}", file=sys.stderr)
        return 2
    server = PolicyServer(policy, config, metadata={"token_budget": policy.token_budget})
    try:
        asyncio.run(server.serve_forever())
    except KeyboardInterrupt:
        print("vla serve: stopped", file=sys.stderr)
    return 0
