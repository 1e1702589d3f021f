"""Real-robot side: Robot protocol, safety layer, control runtime, policy server and client.

    robots.protocol   Robot and Policy protocols, feature keys (numpy only)
    robots.safety     SafetyLimits / SafetyFilter: limits, watchdog, latched e-stop (numpy only)
    robots.runtime    ControlRuntime: fixed-rate chunk execution, real-time chunking (numpy only)
    robots.wire       msgpack + numpy codec, openpi-compatible (numpy, msgpack)
    robots.client     PolicyClient: remote Policy over websockets (numpy, msgpack, websockets)
    robots.server     PolicyServer: `vla serve` (runs next to the model)

Importing this package imports nothing heavy: the robot computer runs the client, runtime and
safety layer without torch. See docs/deployment.md.
"""
