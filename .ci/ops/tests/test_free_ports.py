import socket

import free_ports


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range():
    ports = free_ports.pick(8)
    assert len(set(ports)) == 8
    if free_ports.ephemeral_low() > 2048:
        assert all(1024 <= p < free_ports.ephemeral_low() for p in ports)
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_without_room_below_the_ephemeral_range_the_kernel_chooses(monkeypatch):
    monkeypatch.setattr(free_ports, "ephemeral_low", lambda: 1024)
    ports = free_ports.pick(4)
    assert len(set(ports)) == 4 and all(p > 0 for p in ports)
