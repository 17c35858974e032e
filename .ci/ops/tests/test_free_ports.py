import socket

import free_ports


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range():
    ports = free_ports.pick(8)
    assert len(set(ports)) == 8
    assert all(1024 <= p < free_ports.ephemeral_low() for p in ports)
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
