"""How panels_eval.py turns a Grafana target into a query Prometheus accepts."""

import json

import panels_eval as p


def test_builtin_intervals_become_durations():
    expr = "sum(rate(x_total[$__rate_interval])) + sum(rate(y_total[${__interval}])) + increase(z_total[$__range])"
    assert p.substitute(expr, []) == "sum(rate(x_total[1m])) + sum(rate(y_total[15s])) + increase(z_total[5m])"


def test_template_variables_match_everything_in_every_spelling():
    expr = 'up{job="$job", namespace=~"${namespace:regex}", pod!="[[pod]]"} and on() vector($jobs)'
    assert p.substitute(expr, ["job", "namespace", "pod"]) == \
        'up{job=~".*", namespace=~".*", pod!~".*"} and on() vector($jobs)'


def test_targets_are_found_in_nested_rows_and_sql_targets_skipped(tmp_path):
    dash = tmp_path / "d.json"
    dash.write_text(json.dumps({
        "templating": {"list": [{"name": "datasource", "type": "datasource"}, {"name": "job", "type": "query"}]},
        "panels": [
            {"title": "Top", "targets": [{"refId": "A", "expr": 'a{job="$job"}'}]},
            {"type": "row", "title": "Row", "panels": [
                {"title": "Nested", "targets": [{"refId": "B", "expr": "rate(b_total[$__rate_interval])"}]},
                {"title": "SQL", "targets": [{"refId": "A", "rawSql": "SELECT 1"}]},
            ]},
        ],
    }))
    assert list(p.promql_targets(dash)) == [("Top", "A", 'a{job=~".*"}'), ("Nested", "B", "rate(b_total[1m])")]
