"""Alert rules: each required alert exists and has a promtool unit test that fires it."""

import json

import yaml

import render

PROM = render.REPO / "dashboards" / "prometheus"
GRAFANA = render.REPO / "dashboards" / "grafana"


def alerts():
    doc = yaml.safe_load((PROM / "hbmesh-rules.yaml").read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def test_required_alerts_exist():
    names = set(alerts())
    for required in ("HbStreamConsumerLagGrowing", "HbIngestRejectionSpike", "HbIngestAckLatencyHigh",
                     "HbIngestNoData", "HbServiceCrashLooping"):
        assert required in names
    for rule in alerts().values():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["runbook_url"]


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    tests = yaml.safe_load((PROM / "hbmesh-rules.test.yaml").read_text())
    fired, quiet = set(), set()
    for case in tests["tests"]:
        for t in case.get("alert_rule_test", []):
            (fired if t.get("exp_alerts") else quiet).add(t["alertname"])
    assert set(alerts()) <= fired, f"alerts never fired by a test: {set(alerts()) - fired}"
    assert {"HbStreamConsumerLagGrowing", "HbIngestRejectionSpike", "HbIngestAckLatencyHigh", "HbIngestNoData"} <= quiet


def test_dashboards_are_well_formed():
    uids = set()
    for path in GRAFANA.glob("*.json"):
        dash = json.loads(path.read_text())
        assert dash["uid"] not in uids
        uids.add(dash["uid"])
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), path
        for panel in dash["panels"]:
            for t in panel.get("targets", []):
                if "expr" in t:
                    assert t["datasource"]["uid"] == "${datasource}", (path, panel["title"])
                else:
                    assert t["datasource"]["uid"] == "hbmesh-yugabyte" and t["rawSql"].strip()
    assert {"hbmesh-ops", "hbmesh-business"} <= uids


def test_ops_dashboard_covers_the_issue():
    titles = {p["title"] for p in json.loads((GRAFANA / "ops.json").read_text())["panels"]}
    for wanted in ("Ingest rate", "Rejections by reason", "Ack latency", "Consumer lag per partition",
                   "Sessions", "Processed heartbeats", "Store write latency", "Query latency p99 by report"):
        assert wanted in titles
    titles = {p["title"] for p in json.loads((GRAFANA / "business.json").read_text())["panels"]}
    assert {"Concurrent viewers", "Watch time by license holder"} <= titles
