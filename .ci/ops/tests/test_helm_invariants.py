"""Invariants of the rendered hbmesh chart (issue 5, item 2)."""

import json
import re

import helm_python as helm
import pytest
import yaml

import render

COMPONENTS = ("ingest", "stream", "query")
SECRET_ENV = {"HB_AUTH_SECRET", "HB_YUGABYTE_URL"}
SECRETISH = re.compile(r"SECRET|PASSWORD|TOKEN|_URL$|KEY$", re.I)
# Matched by SECRETISH but not secret: a URL without credentials, and the
# paths of the TLS files (the key itself is mounted from a Secret).
NOT_SECRET = {"HB_TRINO_URL", "HB_TLS_KEY", "HB_TLS_CERT"}

# Every HB_* setting of the contract, per service (secrets included).
CONTRACT_ENV = {
    "ingest": {"HB_AUTH_SECRET", "HB_LOG_FORMAT", "HB_LOG", "HB_INGEST_ADDR", "HB_INGEST_METRICS_ADDR",
               "HB_KAFKA_BROKERS", "HB_KAFKA_TOPIC", "HB_DLQ_TOPIC", "HB_DEVICE_RATE", "HB_DEVICE_BURST",
               "HB_MAX_EVENT_AGE", "HB_INGEST_CONCURRENCY"},
    "stream": {"HB_AUTH_SECRET", "HB_LOG_FORMAT", "HB_LOG", "HB_STREAM_METRICS_ADDR", "HB_KAFKA_BROKERS",
               "HB_KAFKA_TOPIC", "HB_KAFKA_GROUP", "HB_YUGABYTE_URL", "HB_SCYLLA_NODES", "HB_SESSION_GAP",
               "HB_ALLOWED_LATENESS", "HB_IDLE_TIMEOUT", "HB_RAW_TTL", "HB_FLUSH_INTERVAL"},
    "query": {"HB_AUTH_SECRET", "HB_LOG_FORMAT", "HB_LOG", "HB_QUERY_HTTP_ADDR", "HB_QUERY_GRPC_ADDR",
              "HB_QUERY_METRICS_ADDR", "HB_YUGABYTE_URL", "HB_TRINO_URL", "HB_TRINO_CATALOG_YUGABYTE",
              "HB_TRINO_CATALOG_SCYLLA", "HB_QUERY_TIMEOUT"},
}


def by_component(objs, component):
    return [o for o in objs if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component]


def one(objs, kind, component):
    found = [o for o in by_component(objs, component) if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} for {component}, got {len(found)}"
    return found[0]


def workloads(r):
    return r.of_kind("Deployment") + r.of_kind("Job")


def pod_spec(obj):
    return obj["spec"]["template"]["spec"]


def env_of(r, deployment):
    """Effective env of the first container: envFrom ConfigMaps + env."""
    container = pod_spec(deployment)["containers"][0]
    env = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        [cm] = [c for c in r.of_kind("ConfigMap") if c["metadata"]["name"] == name]
        env.update({k: ("configmap", v) for k, v in cm["data"].items()})
    for item in container.get("env", []):
        env[item["name"]] = ("valueFrom", item["valueFrom"]) if "valueFrom" in item else ("value", item["value"])
    return env


def test_every_values_file_renders(mesh_renders):
    assert {"values.yaml", "values-dev.yaml", "values-prod.yaml"} <= set(mesh_renders)


def test_pods_are_hardened(mesh_renders):
    for name, r in mesh_renders.items():
        assert workloads(r), name
        for w in workloads(r):
            spec = pod_spec(w)
            where = f"{name}: {w['kind']}/{w['metadata']['name']}"
            assert spec["securityContext"]["runAsNonRoot"] is True, where
            assert spec["securityContext"].get("runAsUser", 1) != 0, where
            assert spec.get("automountServiceAccountToken") is False, where
            assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), where
            for c in spec["containers"] + spec.get("initContainers", []):
                sc = c["securityContext"]
                assert sc["runAsNonRoot"] is True and sc.get("runAsUser", 1) != 0, where
                assert sc["readOnlyRootFilesystem"] is True, where
                assert sc["allowPrivilegeEscalation"] is False, where
                assert sc.get("privileged", False) is False, where
                assert "ALL" in sc["capabilities"]["drop"] and not sc["capabilities"].get("add"), where
                assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
                for kind in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{where} {kind}"
                assert not c["image"].endswith(":latest") and ":" in c["image"], where
                # a read-only root needs a writable /tmp
                assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), where


def test_probes_hit_the_real_health_endpoints(mesh_renders):
    for name, r in mesh_renders.items():
        tls = "tls" in name
        for component in COMPONENTS:
            d = one(r.of_kind("Deployment"), "Deployment", component)
            c = pod_spec(d)["containers"][0]
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
            assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
            readiness = c["readinessProbe"]
            if component == "stream" or tls:
                # svc-stream has no gRPC port; kubelet gRPC probes cannot speak TLS
                assert readiness["httpGet"] == {"path": "/readyz", "port": "http-metrics"}, (name, component)
            else:
                assert readiness["grpc"]["port"] == ports["grpc"], (name, component)


def test_secrets_are_only_referenced(mesh_renders):
    for name, r in mesh_renders.items():
        assert not r.of_kind("Secret"), f"{name}: the chart must not render Secrets"
        for cm in r.of_kind("ConfigMap"):
            if cm["metadata"].get("labels", {}).get("grafana_dashboard"):
                continue
            leaked = [k for k in cm.get("data", {}) if k in SECRET_ENV or SECRETISH.search(k) and k not in NOT_SECRET]
            assert not leaked, f"{name}: ConfigMap {cm['metadata']['name']} holds {leaked}"
        for w in workloads(r):
            for c in pod_spec(w)["containers"]:
                for item in c.get("env", []):
                    if item["name"] in SECRET_ENV or (SECRETISH.search(item["name"]) and item["name"] not in NOT_SECRET):
                        ref = item.get("valueFrom", {}).get("secretKeyRef")
                        assert ref and "value" not in item, f"{name}: {item['name']} must come from a secretKeyRef"
                        assert ref["name"] == "hbmesh-secrets", name


def test_tls_material_comes_from_a_secret_volume(mesh_renders):
    r = mesh_renders["hbmesh-tls-noautoscale.yaml"]
    for component in COMPONENTS:
        d = one(r.of_kind("Deployment"), "Deployment", component)
        env = env_of(r, d)
        volumes = {v["name"]: v for v in pod_spec(d)["volumes"]}
        mounts = pod_spec(d)["containers"][0]["volumeMounts"]
        for key in ("HB_TLS_CERT", "HB_TLS_KEY"):
            path = env[key][1]
            [mount] = [m for m in mounts if path.startswith(m["mountPath"] + "/")]
            assert volumes[mount["name"]]["secret"]["secretName"] == "hbmesh-tls"


def test_schema_has_no_place_for_secret_values():
    with helm.Chart.load(render.MESH_CHART) as chart:
        for bad in ({"secrets": {"authSecret": "hunter2"}},
                    {"secrets": {"existingSecret": ""}},
                    {"containerSecurityContext": {"readOnlyRootFilesystem": False}},
                    {"ingest": {"hpa": {"enabled": "yes"}}},
                    {"stream": {"config": {"sessionGap": "ten minutes"}}},
                    {"typo": 1}):
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema(bad)


def test_every_setting_is_wired(mesh_renders):
    for name, r in mesh_renders.items():
        for component in COMPONENTS:
            env = env_of(r, one(r.of_kind("Deployment"), "Deployment", component))
            missing = CONTRACT_ENV[component] - set(env)
            assert not missing, f"{name} {component}: missing {sorted(missing)}"
            for key, (how, value) in env.items():
                if key.endswith("_ADDR"):
                    assert how == "configmap" and value.startswith("0.0.0.0:"), (name, key, value)
            # ports in the env agree with the container ports
            c = pod_spec(one(r.of_kind("Deployment"), "Deployment", component))["containers"][0]
            ports = {p["name"]: str(p["containerPort"]) for p in c["ports"]}
            metrics_addr = env[f"HB_{component.upper()}_METRICS_ADDR"][1]
            assert metrics_addr.endswith(":" + ports["http-metrics"])


def test_autoscaling(shipped_mesh_renders):
    for name, r in shipped_mesh_renders.items():
        values = render.load_values([render.MESH_CHART / "values.yaml"] + ([render.MESH_CHART / name] if name != "values.yaml" else []))
        for component in ("ingest", "query"):
            hpa = one(r.of_kind("HorizontalPodAutoscaler"), "HorizontalPodAutoscaler", component)
            d = one(r.of_kind("Deployment"), "Deployment", component)
            assert hpa["spec"]["scaleTargetRef"]["name"] == d["metadata"]["name"]
            assert "replicas" not in d["spec"], "the HPA owns the replica count"
        so = one(r.of_kind("ScaledObject"), "ScaledObject", "stream")
        d = one(r.of_kind("Deployment"), "Deployment", "stream")
        assert so["spec"]["scaleTargetRef"]["name"] == d["metadata"]["name"]
        [trigger] = so["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        env = env_of(r, d)
        assert trigger["metadata"]["consumerGroup"] == env["HB_KAFKA_GROUP"][1]
        assert trigger["metadata"]["topic"] == env["HB_KAFKA_TOPIC"][1]
        assert trigger["metadata"]["bootstrapServers"] == env["HB_KAFKA_BROKERS"][1]
        assert so["spec"]["maxReplicaCount"] <= values["kafka"]["partitions"], name


def test_keda_is_capped_at_the_partition_count():
    with helm.Chart.load(render.MESH_CHART) as chart:
        with pytest.raises(helm.HelmError, match="must not exceed kafka.partitions"):
            chart.render(values={"kafka": {"partitions": 6}, "stream": {"keda": {"maxReplicaCount": 7}}}, name="x")


def test_keda_off_means_fixed_replicas(mesh_renders):
    r = mesh_renders["hbmesh-tls-noautoscale.yaml"]
    assert not r.of_kind("ScaledObject") and not r.of_kind("HorizontalPodAutoscaler")
    for component in COMPONENTS:
        assert one(r.of_kind("Deployment"), "Deployment", component)["spec"]["replicas"] >= 1


def test_disruption_budgets(shipped_mesh_renders):
    for name, r in shipped_mesh_renders.items():
        for component in COMPONENTS:
            pdb = one(r.of_kind("PodDisruptionBudget"), "PodDisruptionBudget", component)
            labels = pod_spec_labels(one(r.of_kind("Deployment"), "Deployment", component))
            assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
            assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"]), name


def pod_spec_labels(d):
    return d["spec"]["template"]["metadata"]["labels"]


def test_services_and_grpc_balancing(shipped_mesh_renders):
    for name, r in shipped_mesh_renders.items():
        services = r.of_kind("Service")
        for component, expected in (("ingest", {"grpc", "http-metrics"}), ("stream", {"http-metrics"}),
                                    ("query", {"http", "grpc", "http-metrics"})):
            mine = by_component(services, component)
            main = [s for s in mine if s["spec"].get("clusterIP") != "None"]
            assert len(main) == 1
            assert {p["name"] for p in main[0]["spec"]["ports"]} == expected
            for p in main[0]["spec"]["ports"]:
                assert p["appProtocol"] == ("grpc" if p["name"] == "grpc" else "http")
            if component != "stream":
                headless = [s for s in mine if s["spec"].get("clusterIP") == "None"]
                assert len(headless) == 1, f"{name}: {component} needs a headless Service for client-side gRPC balancing"
                assert "grpc" in {p["name"] for p in headless[0]["spec"]["ports"]}


def test_service_monitor_scrapes_every_service(shipped_mesh_renders):
    for name, r in shipped_mesh_renders.items():
        [sm] = r.of_kind("ServiceMonitor")
        assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        selected = [s for s in r.of_kind("Service")
                    if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        assert sorted(s["metadata"]["labels"]["app.kubernetes.io/component"] for s in selected) == sorted(COMPONENTS)
        port = sm["spec"]["endpoints"][0]["port"]
        for s in selected:
            assert port in {p["name"] for p in s["spec"]["ports"]}
            assert all(s["spec"].get("clusterIP") != "None" for s in selected), "scrape each pod once"


def test_network_policies(shipped_mesh_renders):
    for name, r in shipped_mesh_renders.items():
        for component in COMPONENTS:
            np = one(r.of_kind("NetworkPolicy"), "NetworkPolicy", component)
            d = one(r.of_kind("Deployment"), "Deployment", component)
            assert np["spec"]["podSelector"]["matchLabels"].items() <= pod_spec_labels(d).items()
            container_ports = {p["name"] for p in pod_spec(d)["containers"][0]["ports"]}
            opened = {p["port"] for rule in np["spec"]["ingress"] for p in rule["ports"]}
            assert {p for p in opened if isinstance(p, str)} <= container_ports
            assert "http-metrics" in opened
            assert "Ingress" in np["spec"]["policyTypes"]


def test_migration_job_is_a_hook(shipped_mesh_renders):
    for name, r in shipped_mesh_renders.items():
        [job] = r.of_kind("Job")
        annotations = job["metadata"]["annotations"]
        assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
        c = pod_spec(job)["containers"][0]
        assert c["args"] == ["--migrate-only"] and "/svc-stream:" in c["image"]
        env = {e["name"]: e for e in c["env"]}
        assert env["HB_YUGABYTE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "hbmesh-secrets"
        assert pod_spec(job)["restartPolicy"] == "Never"
        # the hook runs before the release's ConfigMaps exist
        assert "envFrom" not in c


def test_linkerd_toggle(mesh_renders):
    prod = mesh_renders["values-prod.yaml"]
    dev = mesh_renders["values-dev.yaml"]
    for d in prod.of_kind("Deployment"):
        assert d["spec"]["template"]["metadata"]["annotations"]["linkerd.io/inject"] == "enabled"
    for d in dev.of_kind("Deployment"):
        assert "linkerd.io/inject" not in d["spec"]["template"]["metadata"]["annotations"]
    [job] = prod.of_kind("Job")
    assert job["spec"]["template"]["metadata"]["annotations"]["linkerd.io/inject"] == "disabled"


def test_dashboards_and_rules_are_provisioned(shipped_mesh_renders):
    grafana = render.REPO / "dashboards" / "grafana"
    rules = yaml.safe_load((render.REPO / "dashboards" / "prometheus" / "hbmesh-rules.yaml").read_text())
    for name, r in shipped_mesh_renders.items():
        cms = [c for c in r.of_kind("ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
        shipped = {}
        for cm in cms:
            for key, text in cm["data"].items():
                shipped[key] = json.loads(text)
        expected = {f"hbmesh-{p.stem}.json": json.loads(p.read_text()) for p in grafana.glob("*.json")}
        assert shipped == expected, name
        assert {"hbmesh-ops.json", "hbmesh-business.json"} <= set(shipped)
        [rule] = r.of_kind("PrometheusRule")
        assert rule["spec"]["groups"] == rules["groups"]
