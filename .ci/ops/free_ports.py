"""Print N distinct free TCP ports on 127.0.0.1, one per line.

Ports come from below the kernel's ephemeral range: a port the kernel hands
out for bind(0) is also one it hands out for outgoing connections, so a
service's own database or Kafka connections (made before it binds its
listeners) could take it between the pick and the bind. All N are held
bound together while picking, so they are distinct.
"""

import random
import socket
import sys


def ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def pick(n: int) -> list[int]:
    high = ephemeral_low()
    low = max(1024, min(10000, high - 4 * n - 1000))
    # No room below the ephemeral range (it starts near 1024): let the kernel
    # choose, still holding all n so they are distinct.
    candidates = random.sample(range(low, high), high - low) if high - low > 2 * n else [0] * (n * 4)
    held, ports = [], []
    try:
        for port in candidates:
            if len(ports) == n:
                break
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            held.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in held:
            s.close()
    if len(ports) < n:
        sys.exit(f"free_ports: only {len(ports)} of {n} free ports below {high}")
    return ports


if __name__ == "__main__":
    print("\n".join(str(p) for p in pick(int(sys.argv[1]) if len(sys.argv) > 1 else 1)))
