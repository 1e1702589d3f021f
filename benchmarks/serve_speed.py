"""`vla bench serve`: policy-server throughput and latency with 1, 4 and 16 concurrent clients.

The server runs in this process (a thread with its own event loop) on 127.0.0.1; each client is
a separate process (spawn) running `robots.client.PolicyClient` in a closed loop: send an
observation, wait for the chunk, repeat, for `--duration` seconds after a common start barrier.
Reported: requests/s over all clients, and per-request round-trip latency p50/p90/p99 as the
client sees it (encode + network + queueing + inference + decode).

By default the policy is `FixedLatencyPolicy` (sleeps --latency-ms, returns an (H, A) chunk), so
the numbers isolate the serving stack; `--policy CKPT` serves a real checkpoint instead.
Policy calls are serialized on one worker thread, so with a fixed-latency policy the ceiling is
1000 / latency_ms requests/s and extra clients add queueing latency, not throughput.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="Policy server requests/s and latency percentiles.", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrency levels")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per level")
    parser.add_argument("--latency-ms", type=float, default=5.0, help="fake policy latency")
    parser.add_argument("--policy", default=None, help="serve this checkpoint instead of the fake policy")
    parser.add_argument("--image-size", type=int, default=128, help="side of the two RGB camera images")
    parser.add_argument("--chunk-size", type=int, default=8, help="fake policy chunk length H")
    parser.add_argument("--out", default="outputs/bench/serve.json", help="JSON results path")
    parser.set_defaults(func=run)


def _observation(image_size: int, state_dim: int, cameras: list[str], seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    obs = {f"observation.images.{cam}": rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)
           for cam in cameras}
    obs["observation.state"] = rng.normal(size=state_dim).astype(np.float32)
    obs["task"] = "put the black bowl on the plate"
    return obs


def _client_process(port: int, obs_spec: tuple, duration: float, barrier, results) -> None:
    """One benchmark client: warm up, wait for everyone, then a closed loop for `duration` s."""
    from robots.client import PolicyClient

    obs = _observation(*obs_spec)
    latencies = []
    errors = 0
    with PolicyClient(port=port, connect_timeout_s=30, request_timeout_s=60) as client:
        for _ in range(3):
            client.infer(obs)
        barrier.wait()
        end = time.perf_counter() + duration
        while True:
            start = time.perf_counter()
            if start >= end:
                break
            try:
                client.infer(obs)
                latencies.append(time.perf_counter() - start)
            except Exception:
                errors += 1
    results.put((latencies, errors))


def measure(port: int, n_clients: int, duration: float, obs_spec: tuple) -> dict:
    import multiprocessing

    import numpy as np

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n_clients + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=_client_process, args=(port, obs_spec, duration, barrier, results), daemon=True)
             for _ in range(n_clients)]
    for proc in procs:
        proc.start()
    barrier.wait(timeout=120)
    start = time.perf_counter()
    collected = [results.get(timeout=duration + 120) for _ in procs]
    wall = time.perf_counter() - start
    for proc in procs:
        proc.join(timeout=10)
    latencies = np.concatenate([np.asarray(lat, dtype=np.float64) for lat, _ in collected]) * 1e3
    count = int(latencies.size)
    return {
        "clients": n_clients,
        "requests": count,
        "errors": int(sum(e for _, e in collected)),
        "seconds": wall,
        "requests_per_s": count / duration,
        "latency_ms": {f"p{q}": float(np.percentile(latencies, q)) if count else float("nan") for q in (50, 90, 99)},
    }


def run(args: argparse.Namespace) -> int:
    from robots.server import FixedLatencyPolicy, PolicyServer, ServerConfig

    if args.policy:
        from policies.vla_policy import VLAPolicy

        policy = VLAPolicy.from_checkpoint(args.policy)
        meta = policy.metadata
        obs_spec = (meta.image_size[0], meta.state_dim, list(meta.camera_names), 0)
        label = f"checkpoint {args.policy}"
    else:
        policy = FixedLatencyPolicy(chunk_size=args.chunk_size, latency_s=args.latency_ms / 1e3)
        obs_spec = (args.image_size, 8, ["agentview", "wrist"], 0)
        label = f"FixedLatencyPolicy({args.latency_ms} ms, H={args.chunk_size})"
    server = PolicyServer(policy, ServerConfig(port=0)).run_in_thread(timeout_s=120)
    rows = []
    try:
        for n in args.clients:
            rows.append(measure(server.port, n, args.duration, obs_spec))
    finally:
        server.stop()

    print(f"policy server on 127.0.0.1, {label}, {len(obs_spec[2])} x {obs_spec[0]}^2 RGB images")
    print(f"{'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for row in rows:
        lat = row["latency_ms"]
        print(f"{row['clients']:>7} {row['requests_per_s']:>9.1f} {lat['p50']:>8.2f} {lat['p90']:>8.2f} "
              f"{lat['p99']:>8.2f} {row['errors']:>6}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"policy": label, "duration_s": args.duration, "results": rows}, indent=2))
    print(f"wrote {out}")
    return 0
