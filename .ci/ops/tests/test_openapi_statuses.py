"""openapi_statuses.py: documented statuses against what the runs reached."""

import json

import openapi_statuses as s

DOCUMENT = {
    "openapi": "3.1.0",
    "paths": {
        "/v1/users/{user_id}/progress": {
            "get": {
                "responses": {
                    "200": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Rows"}}}},
                    "400": {},
                    "403": {},
                    "503": {},
                }
            }
        },
        "/v1/catalog/ads": {"put": {"responses": {"200": {}, "400": {}}}},
    },
}


def har(tmp_path, name, calls):
    entries = [
        {
            "request": {"method": method, "url": f"http://127.0.0.1:1{path}"},
            "response": {"status": status, "content": {"text": json.dumps(body)}},
        }
        for method, path, status, body in calls
    ]
    path = tmp_path / name
    path.write_text(json.dumps({"log": {"entries": entries}}))
    return str(path)


def run(tmp_path, *hars):
    schema = tmp_path / "openapi.json"
    schema.write_text(json.dumps(DOCUMENT))
    return s.main(["--schema", str(schema), *hars])


ALL_REACHED = [
    ("GET", "/v1/users/u%2F1/progress", 200, {"rows": [{"video_id": "v"}]}),
    ("GET", "/v1/users/u1/progress?x=1", 400, {"error": "bad_request"}),
    ("PUT", "/v1/catalog/ads", 200, {"upserted": 1}),
    ("PUT", "/v1/catalog/ads", 400, {"error": "bad_request"}),
]


def test_every_client_status_reached_passes_and_5xx_need_not_be(tmp_path, capsys):
    first = har(tmp_path, "a.har", ALL_REACHED)
    second = har(tmp_path, "b.har", [("GET", "/v1/users/u1/progress", 403, {})])
    assert run(tmp_path, first, second) == 0
    out = capsys.readouterr().out
    assert "server-side, not reached: [503]" in out


def test_a_missing_status_an_undocumented_one_and_a_5xx_fail(tmp_path, capsys):
    calls = ALL_REACHED + [
        ("PUT", "/v1/catalog/ads", 404, {}),
        ("GET", "/v1/users/u1/progress", 503, {}),
    ]
    assert run(tmp_path, har(tmp_path, "a.har", calls)) == 1
    out = capsys.readouterr().out
    assert "GET /v1/users/{user_id}/progress: documented [403] never answered" in out
    assert "PUT /v1/catalog/ads: answered undocumented [404]" in out
    assert "server error: 503 GET" in out


def test_lists_must_be_seen_with_rows(tmp_path, capsys):
    calls = [c for c in ALL_REACHED if c[2] != 200 or c[0] == "PUT"]
    calls += [("GET", "/v1/users/u1/progress", 200, {"rows": []}), ("GET", "/v1/users//progress", 403, {})]
    assert run(tmp_path, har(tmp_path, "a.har", calls)) == 1
    assert "no answer had rows" in capsys.readouterr().out
