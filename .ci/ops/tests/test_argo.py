"""ArgoCD app-of-apps: sources exist, versions pinned, waves ordered, and the
data tier agrees with the mesh chart's settings."""

import pathlib
import re

import yaml

import render

REPO = render.REPO
PLACEHOLDER_REPO = "https://github.com/example/heartbeat-mesh.git"
EXACT_VERSION = re.compile(r"^v?\d+\.\d+\.\d+$")
WAVE_ORDER = [  # (earlier, later): later depends on earlier
    ("cert-manager", "scylla-operator"),
    ("kube-prometheus-stack", "hbmesh"),
    ("kube-prometheus-stack", "strimzi-operator"),
    ("strimzi-operator", "kafka-cluster"),
    ("scylla-operator", "scylla-cluster"),
    ("keda", "hbmesh"),
    ("kafka-cluster", "hbmesh"),
    ("yugabyte", "trino"),
    ("scylla-cluster", "trino"),
    ("yugabyte", "hbmesh"),
    ("trino", "hbmesh"),
]


def roots():
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted((REPO / "argo").glob("root-*.yaml"))}


def project():
    return yaml.safe_load((REPO / "argo" / "project.yaml").read_text())


def applications(argo_renders):
    apps = [a for r in argo_renders.values() for a in r.of_kind("Application")]
    return apps + list(roots().values())


def sources(app):
    spec = app["spec"]
    return spec.get("sources") or [spec["source"]]


def short(app):
    return app["metadata"]["name"].rsplit("-", 1)[0]


def test_one_root_per_environment(argo_renders):
    assert set(roots()) == {"root-dev", "root-prod"}
    for env, root in ((k.split("-")[1], v) for k, v in roots().items()):
        [src] = sources(root)
        assert src["path"] == "argo/apps" and src["helm"]["valueFiles"] == [f"values-{env}.yaml"]
    assert {r for r in argo_renders} == {"dev", "prod"}


def test_every_source_path_and_values_file_exists(argo_renders):
    for app in applications(argo_renders):
        name = app["metadata"]["name"]
        for src in sources(app):
            if "path" in src:
                path = REPO / src["path"]
                assert (path / "Chart.yaml").exists() or path.is_dir(), f"{name}: {src['path']} missing"
                for vf in src.get("helm", {}).get("valueFiles", []):
                    assert (path / vf).is_file(), f"{name}: {src['path']}/{vf} missing"
            for vf in src.get("helm", {}).get("valueFiles", []):
                if vf.startswith("$values/"):
                    assert (REPO / vf.removeprefix("$values/")).is_file(), f"{name}: {vf} missing"


def test_chart_versions_are_pinned(argo_renders):
    charts = 0
    for app in applications(argo_renders):
        for src in sources(app):
            if "chart" in src:
                charts += 1
                rev = str(src["targetRevision"])
                assert EXACT_VERSION.match(rev), f"{app['metadata']['name']}: chart {src['chart']} version {rev!r} is not pinned"
                assert not re.search(r"[*^~<>=| x]|latest|HEAD", rev)
            else:
                assert src["repoURL"] == PLACEHOLDER_REPO, app["metadata"]["name"]
    assert charts >= 14  # 7 third-party charts x 2 environments


def test_production_tracks_a_tag(argo_renders):
    for app in argo_renders["prod"].of_kind("Application") + [roots()["root-prod"]]:
        for src in sources(app):
            if "chart" not in src:
                assert EXACT_VERSION.match(str(src["targetRevision"])), app["metadata"]["name"]


def test_sync_policy_and_waves(argo_renders):
    for env, r in argo_renders.items():
        apps = {short(a): a for a in r.of_kind("Application")}
        assert set(apps) >= {"hbmesh", "strimzi-operator", "kafka-cluster", "yugabyte", "scylla-operator",
                             "scylla-cluster", "trino", "kube-prometheus-stack", "keda"}
        wave = {n: int(a["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]) for n, a in apps.items()}
        for earlier, later in WAVE_ORDER:
            assert wave[earlier] < wave[later], f"{env}: {earlier} (wave {wave[earlier]}) must sync before {later} ({wave[later]})"
        for a in apps.values():
            auto = a["spec"]["syncPolicy"]["automated"]
            assert auto["prune"] is True and auto["selfHeal"] is True
            assert a["metadata"]["name"].endswith(f"-{env}")
    for root in roots().values():
        assert root["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}


def test_project_allows_what_the_apps_use(argo_renders):
    proj = project()
    repos = set(proj["spec"]["sourceRepos"])
    dests = {(d["server"], d["namespace"]) for d in proj["spec"]["destinations"]}
    for app in applications(argo_renders):
        assert app["spec"]["project"] == proj["metadata"]["name"]
        d = app["spec"]["destination"]
        assert (d["server"], d["namespace"]) in dests, app["metadata"]["name"]
        for src in sources(app):
            assert src["repoURL"] in repos, src["repoURL"]


def kafka(env):
    return render.render(REPO / "argo/charts/kafka", [REPO / f"argo/charts/kafka/values-{env}.yaml"], namespace="kafka")


def mesh_values(env):
    return render.load_values([REPO / "helm/hbmesh/values.yaml", REPO / f"helm/hbmesh/values-{env}.yaml"])


def test_kafka_topics(argo_renders):
    for env in ("dev", "prod"):
        r = kafka(env)
        [cluster] = r.of_kind("Kafka")
        [pool] = r.of_kind("KafkaNodePool")
        topics = {t["spec"]["topicName"]: t for t in r.of_kind("KafkaTopic")}
        assert set(topics) == {"heartbeats", "heartbeats-dlq"}
        values = mesh_values(env)
        assert values["kafka"]["topic"] == "heartbeats" and values["kafka"]["dlqTopic"] == "heartbeats-dlq"
        for name, t in topics.items():
            spec = t["spec"]
            assert t["metadata"]["labels"]["strimzi.io/cluster"] == cluster["metadata"]["name"]
            assert spec["partitions"] >= 1 and 1 <= spec["replicas"] <= pool["spec"]["replicas"]
            assert int(spec["config"]["retention.ms"]) > 0
            assert int(spec["config"]["min.insync.replicas"]) <= spec["replicas"]
            if env == "prod":
                assert spec["replicas"] >= 3 and int(spec["config"]["min.insync.replicas"]) >= 2
        hb = topics["heartbeats"]["spec"]
        assert hb["partitions"] == values["kafka"]["partitions"], f"{env}: chart and topic disagree on partitions"
        assert values["stream"]["keda"]["maxReplicaCount"] <= hb["partitions"]
        host = values["kafka"]["brokers"].split(":")[0]
        assert host.startswith(f"{cluster['metadata']['name']}-kafka-bootstrap.kafka")


def test_scylla_and_trino_agree(argo_renders):
    props = {p.stem: dict(line.split("=", 1) for line in p.read_text().splitlines()
                          if line.strip() and not line.startswith("#"))
             for p in (REPO / "helm" / "trino").glob("*.properties")}
    assert props["yugabyte"]["connector.name"] == "postgresql"
    assert props["yugabyte"]["connection-url"].startswith("jdbc:postgresql://yb-tservers.yugabyte")
    assert props["yugabyte"]["connection-url"].endswith("/hbmesh")
    assert props["scylla"]["connector.name"] == "cassandra"
    for env in ("dev", "prod"):
        r = render.render(REPO / "argo/charts/scylla", [REPO / f"argo/charts/scylla/values-{env}.yaml"], namespace="scylla")
        [cluster] = r.of_kind("ScyllaCluster")
        assert props["scylla"]["cassandra.load-policy.dc-aware.local-dc"] == cluster["spec"]["datacenter"]["name"]
        client = f"{cluster['metadata']['name']}-client.scylla"
        assert props["scylla"]["cassandra.contact-points"].startswith(client)
        values = mesh_values(env)
        assert all(n.startswith(client) for n in values["scylla"]["nodes"].split(","))
        [trino] = [a for a in argo_renders[env].of_kind("Application") if short(a) == "trino"]
        catalogs = trino["spec"]["sources"][0]["helm"]["valuesObject"]["catalogs"]
        assert set(catalogs) == {values["trino"]["catalogYugabyte"], values["trino"]["catalogScylla"]}
        for name, text in catalogs.items():
            assert text == (REPO / "helm" / "trino" / f"{name}.properties").read_text()
        # no credentials inline: only environment references
        for text in catalogs.values():
            for line in text.splitlines():
                if re.match(r"(connection-password|cassandra\.password)=", line):
                    assert "${ENV:" in line


def test_manifests_name_no_real_hosts():
    for path in list((REPO / "argo").rglob("*.yaml")) + list((REPO / "helm").rglob("*.yaml")):
        text = path.read_text()
        for url in re.findall(r"https?://[^\s\"']+", text):
            host = url.split("/")[2]
            assert (host.endswith("example.com") or host == "github.com" and "/example/" in url
                    or host in {"kubernetes.default.svc", "charts.jetstack.io", "prometheus-community.github.io",
                                "strimzi.io", "scylla-operator-charts.storage.googleapis.com", "kedacore.github.io",
                                "charts.yugabyte.com", "trinodb.github.io"}
                    or host.endswith(".svc") or ".svc:" in host), f"{path}: {url}"
