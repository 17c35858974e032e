"""Helm and manifest checks.

For every chart (helm/hbmesh, argo/apps, argo/charts/*) and every values
combination it ships:
  1. `helm lint --strict` through helm-python-sdk (Helm v4 as a library);
  2. render with the same engine (values.schema.json enforced);
  3. validate every rendered core object with `kubernetes-validate --strict`;
  4. collect custom resources (ServiceMonitor, PrometheusRule, ScaledObject,
     ArgoCD Application/AppProject) plus the hand-written argo/*.yaml into
     OUT/crs.json for node/validate-crs.mjs (their CRD schemas).
Kinds with no schema available (Strimzi, ScyllaCluster) are listed, not
silently passed; pytest covers their contents.

usage: python check_helm.py OUT_DIR     exit 1 on any failure
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import yaml

import render

KUBE_VERSION = "1.33.0"


def lint(chart: pathlib.Path, values_files: list[pathlib.Path]) -> list[str]:
    import helm_python as helm

    report = helm.lint(chart, render.load_values(values_files), strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [f"{m['path']}: {m['error']}" for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    problems += list(report.get("errors") or [])
    return problems


def main() -> int:
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    crs: list[dict] = []
    unchecked: dict[str, int] = {}
    validated_core = 0

    for chart in [render.MESH_CHART, render.ARGO_CHART, *render.ARGO_CHARTS]:
        for combo in render.values_matrix(chart):
            label = f"{chart.relative_to(render.REPO)}[{'+'.join(p.name for p in combo) or 'values.yaml'}]"
            problems = lint(chart, combo)
            if problems:
                failures.append(f"helm lint --strict {label}: " + "; ".join(problems))
                print(f"FAIL lint {label}")
                for p in problems:
                    print(f"     {p}")
            else:
                print(f"ok   lint {label}")
            try:
                rendered = render.render(chart, combo, namespace=render._namespace_for(chart))
            except Exception as exc:  # HelmRenderError, HelmValuesError, bad YAML
                failures.append(f"render {label}: {exc}")
                print(f"FAIL render {label}: {exc}")
                continue
            core = []
            for index, obj in enumerate(rendered.objects):
                key = (obj["apiVersion"], obj["kind"])
                source = f"{label} {rendered.sources[index]}"
                if key in render.CRD_KINDS_VALIDATED:
                    crs.append({"source": source, "object": obj})
                elif key in render.CRD_KINDS_UNCHECKED:
                    unchecked[f"{obj['apiVersion']}/{obj['kind']}"] = unchecked.get(f"{obj['apiVersion']}/{obj['kind']}", 0) + 1
                elif "." in obj["apiVersion"].split("/")[0] and not obj["apiVersion"].split("/")[0].endswith("k8s.io"):
                    failures.append(f"{source}: custom resource {key} has no schema check; add it to render.py")
                else:
                    core.append(obj)
            name = label.replace("/", "_").replace("[", "__").replace("]", "").replace("+", "_")
            manifest = out / f"{name}.yaml"
            manifest.write_text(yaml.safe_dump_all(core, sort_keys=False))
            print(f"ok   render {label}: {len(rendered.objects)} objects ({len(core)} core)")
            if core:
                proc = subprocess.run(
                    [str(pathlib.Path(sys.executable).parent / "kubernetes-validate"), "--strict", "--quiet",
                     "-k", KUBE_VERSION, str(manifest)],
                    capture_output=True, text=True,
                )
                if proc.returncode != 0:
                    failures.append(f"kubernetes-validate --strict {label}:\n{proc.stdout}{proc.stderr}")
                    print(f"FAIL kubernetes-validate --strict {label}\n{proc.stdout}{proc.stderr}")
                else:
                    validated_core += len(core)
                    print(f"ok   kubernetes-validate --strict {label}: {len(core)} objects")

    # Hand-written ArgoCD manifests (root Applications, AppProject).
    for path in sorted((render.REPO / "argo").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                crs.append({"source": str(path.relative_to(render.REPO)), "object": doc})

    (out / "crs.json").write_text(json.dumps(crs, indent=1))
    print(f"custom resources for CRD-schema validation: {len(crs)} -> {out / 'crs.json'}")
    for kind, count in sorted(unchecked.items()):
        print(f"NOTE {kind}: {count} object(s) rendered but NOT schema-validated (no CRD schema package "
              f"available from the registries here); contents are asserted by tests/test_argo.py")
    print(f"core objects validated by kubernetes-validate --strict: {validated_core}")
    if failures:
        print(f"{len(failures)} helm/manifest failure(s)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
