import pathlib
import sys

import pytest

OPS = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(OPS))

import render  # noqa: E402


@pytest.fixture(scope="session")
def mesh_renders():
    """helm/hbmesh rendered with every values combination: name -> Render."""
    return {
        ("+".join(p.name for p in combo) or "values.yaml"): render.render(render.MESH_CHART, combo)
        for combo in render.values_matrix(render.MESH_CHART)
    }


@pytest.fixture(scope="session")
def shipped_mesh_renders(mesh_renders):
    """Only the values files operators deploy (defaults, dev, prod)."""
    return {k: v for k, v in mesh_renders.items() if not k.startswith("hbmesh-")}


@pytest.fixture(scope="session")
def argo_renders():
    """argo/apps rendered per environment: env -> Render."""
    return {
        env: render.render(render.ARGO_CHART, [render.ARGO_CHART / f"values-{env}.yaml"], namespace="argocd")
        for env in ("dev", "prod")
    }
