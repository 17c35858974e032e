"""The metric-name extractor and matcher behind metrics_exist.py."""

import json

import metrics_exist as m


def test_extracts_metric_names_not_functions_labels_or_keywords():
    expr = ('histogram_quantile(0.99, sum by (le, report) (rate(hb_query_latency_seconds_bucket{report=~"a|b"}[5m])))'
            ' > 2 and on(job) absent(up{job="x"}) unless sum without (pod) (hb_stream_consumer_lag offset 5m)'
            ' or hbmesh:ingest_rejected:rate5m > bool 0 or vector(1) or rate(x_total[$__rate_interval])')
    assert m.metric_names(expr) == {"hb_query_latency_seconds_bucket", "up", "hb_stream_consumer_lag",
                                    "hbmesh:ingest_rejected:rate5m", "x_total"}


def test_type_lines_provide_names_for_unobserved_families():
    text = "\n".join([
        "# HELP hb_ingest_heartbeats_rejected Rejected.",
        "# TYPE hb_ingest_heartbeats_rejected counter",
        "# TYPE hb_ingest_ack_latency_seconds histogram",
        "# TYPE hb_stream_open_sessions gauge",
        "hb_stream_open_sessions 3",
        'hb_other_total{a="b"} 1',
        "# EOF",
    ])
    names = m.exposed_names(text)
    assert {"hb_ingest_heartbeats_rejected_total", "hb_ingest_ack_latency_seconds_bucket",
            "hb_ingest_ack_latency_seconds_sum", "hb_ingest_ack_latency_seconds_count",
            "hb_stream_open_sessions", "hb_other_total"} <= names
    assert "hb_stream_open_sessions_total" not in names


def test_missing_metrics_are_reported(tmp_path):
    rules = tmp_path / "r.yaml"
    rules.write_text("groups:\n- name: g\n  rules:\n"
                     "  - record: my:rec\n    expr: sum(rate(hb_a_total[5m]))\n"
                     "  - alert: A\n    expr: my:rec > 1 and hb_b > 0 and up == 0\n")
    dash = tmp_path / "d.json"
    dash.write_text(json.dumps({"panels": [{"title": "t", "targets": [
        {"expr": "histogram_quantile(0.9, sum by (le) (rate(hb_c_seconds_bucket[5m])))"},
        {"rawSql": "SELECT hb_not_a_metric FROM x"}]}]}))
    exposition = "# TYPE hb_a counter\n# TYPE hb_c_seconds histogram\n"
    missing, refs = m.check([rules], [dash], [exposition])
    assert [line.split()[0] for line in missing] == ["hb_b"]
    assert "my:rec" in refs and "hb_not_a_metric" not in refs
    missing, _ = m.check([rules], [dash], [exposition + "# TYPE hb_b gauge\n"])
    assert missing == []


def test_cli_fails_on_a_missing_metric(tmp_path, capsys):
    rules = tmp_path / "r.yaml"
    rules.write_text("groups:\n- name: g\n  rules:\n  - alert: A\n    expr: hb_nope_total > 0\n")
    dump = tmp_path / "m.txt"
    dump.write_text("# TYPE hb_yes counter\n")
    assert m.main(["--rules", str(rules), "--metrics-file", str(dump)]) == 1
    assert "MISSING hb_nope_total" in capsys.readouterr().out
