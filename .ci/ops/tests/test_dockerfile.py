"""Static checks of the root Dockerfile (no Docker engine runs here, so the
images are not built by these checks)."""

import re

import yaml

import render

REPO = render.REPO
TARGETS = {"svc-ingest": {50051, 9101}, "svc-stream": {9102}, "svc-query": {8080, 50052, 9103}, "hbmesh": set()}


def stages():
    """[(name, base, [instructions])] with continuation lines joined and comments dropped."""
    lines, buf = [], ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        if raw.strip().startswith("#"):
            continue
        buf += raw.rstrip("\\").rstrip() + " " if raw.rstrip().endswith("\\") else raw
        if not raw.rstrip().endswith("\\"):
            if buf.strip():
                lines.append(buf.strip())
            buf = ""
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            out.append((m.group(2), m.group(1), []))
        elif out:
            out[-1][2].append((word.upper(), rest))
    return out


def test_builder_and_runtime_images():
    st = {name: (base, instr) for name, base, instr in stages()}
    assert st["build"][0] == "rust:${RUST_VERSION}-bookworm"
    assert 'ARG RUST_VERSION=1.95' in (REPO / "Dockerfile").read_text()
    assert st["runtime"][0] == "gcr.io/distroless/cc-debian12:nonroot"
    build_cmd = " ".join(rest for word, rest in st["build"][1] if word == "RUN")
    assert "cargo build --release --locked" in build_cmd
    for target in TARGETS:
        crate = target
        assert f"-p {crate} --bin {target}" in build_cmd
        assert (REPO / crate / "Cargo.toml").exists()


def test_every_target_is_nonroot_shell_free_and_exposes_the_chart_ports():
    st = {name: (base, instr) for name, base, instr in stages()}
    runtime_user = [rest for word, rest in st["runtime"][1] if word == "USER"]
    assert runtime_user == ["65532:65532"]
    values = yaml.safe_load((REPO / "helm/hbmesh/values.yaml").read_text())
    for target, ports in TARGETS.items():
        base, instr = st[target]
        assert base == "runtime"
        words = [w for w, _ in instr]
        assert "RUN" not in words, f"{target}: distroless has no shell to RUN with"
        assert not any(w == "USER" and r.split(":")[0] in {"0", "root"} for w, r in instr)
        [entry] = [r for w, r in instr if w == "ENTRYPOINT"]
        assert entry == f'["/usr/local/bin/{target}"]', "exec form, no shell"
        exposed = {int(p) for w, r in instr if w == "EXPOSE" for p in r.split()}
        assert exposed == ports
        if target != "hbmesh":
            chart_ports = set(values[target.removeprefix("svc-")]["ports"].values())
            assert exposed == chart_ports, target


def test_context_excludes_build_output():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "target/" in ignored and ".git/" in ignored
