"""Render the repository's Helm charts with the real Helm engine (helm-python-sdk,
Helm v4 as a library) and split the output into Kubernetes objects.

Used by check_helm.py (lint + render + schema validation) and by the pytest
invariant tests, so both look at exactly the same manifests.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

import helm_python as helm
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
OPS = pathlib.Path(__file__).resolve().parent

# Charts and the values files each is rendered with. The first entry of every
# list is the chart's own defaults ("values.yaml" alone); the others are
# layered on top of it, as `helm -f values-X.yaml` would.
MESH_CHART = REPO / "helm" / "hbmesh"
ARGO_CHART = REPO / "argo" / "apps"
ARGO_CHARTS = [REPO / "argo" / "charts" / "kafka", REPO / "argo" / "charts" / "scylla"]
# Extra scenarios that switch on the branches the shipped values files leave
# off (TLS, KEDA off, no headless Services, no monitoring objects).
SCENARIOS = OPS / "fixtures"

# Kinds served by CRDs: kubernetes-validate has no schema for them. The ones
# with a schema package are validated by node/validate-crs.mjs; the others are
# listed here and reported as not schema-checked.
CRD_KINDS_VALIDATED = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("argoproj.io/v1alpha1", "Application"),
    ("argoproj.io/v1alpha1", "AppProject"),
}
CRD_KINDS_UNCHECKED = {
    ("kafka.strimzi.io/v1beta2", "Kafka"),
    ("kafka.strimzi.io/v1beta2", "KafkaNodePool"),
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"),
    ("scylla.scylladb.com/v1", "ScyllaCluster"),
}


@dataclass
class Render:
    chart: pathlib.Path
    values_files: list[pathlib.Path]
    objects: list[dict]
    # template path -> object list, to name where an object came from
    sources: dict[int, str]

    @property
    def label(self) -> str:
        names = "+".join(p.name for p in self.values_files) or "defaults"
        return f"{self.chart.relative_to(REPO)}[{names}]"

    def of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o.get("kind") == kind]


def load_values(files: list[pathlib.Path]) -> dict:
    """Merge values files left to right with Helm's own coalescing rules."""
    merged: dict = {}
    for path in files:
        layer = helm.values_from_yaml(path.read_text())
        merged = _deep_merge(merged, layer)
    return merged


def _deep_merge(base: dict, layer: dict) -> dict:
    out = dict(base)
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def render(chart: pathlib.Path, values_files: list[pathlib.Path], *, namespace: str = "hbmesh",
           release: str = "hbmesh") -> Render:
    values = load_values(values_files)
    with helm.Chart.load(chart) as loaded:
        loaded.validate_schema(values)
        manifests = loaded.render(values=values, name=release, namespace=namespace, is_install=True)
    objects: list[dict] = []
    sources: dict[int, str] = {}
    for template, text in sorted(manifests.items()):
        if not template.endswith((".yaml", ".yml")):
            continue  # NOTES.txt and helpers
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                raise ValueError(f"{template}: rendered a document that is not a Kubernetes object: {doc!r:.200}")
            sources[len(objects)] = template
            objects.append(doc)
    return Render(chart=chart, values_files=values_files, objects=objects, sources=sources)


def values_matrix(chart: pathlib.Path) -> list[list[pathlib.Path]]:
    """Every values combination a chart is checked with: its defaults alone,
    each values-*.yaml on top, and (mesh chart) every scenario fixture."""
    base = chart / "values.yaml"
    combos = [[]]
    for extra in sorted(chart.glob("values-*.yaml")):
        combos.append([extra])
    if chart == MESH_CHART:
        for extra in sorted(SCENARIOS.glob("hbmesh-*.yaml")):
            combos.append([extra])
    # values.yaml is loaded by the chart itself; pass only overlays.
    assert base.exists(), f"{chart} has no values.yaml"
    return combos


def all_renders() -> list[Render]:
    renders = []
    for chart in [MESH_CHART, ARGO_CHART, *ARGO_CHARTS]:
        for combo in values_matrix(chart):
            renders.append(render(chart, combo, namespace=_namespace_for(chart)))
    return renders


def _namespace_for(chart: pathlib.Path) -> str:
    return {"apps": "argocd", "kafka": "kafka", "scylla": "scylla"}.get(chart.name, "hbmesh")
