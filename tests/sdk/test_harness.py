"""The emulator harness itself: it starts, prints its URL, and injects faults on request."""

import json
import urllib.error
import urllib.request


def request(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_faults_are_injected_and_consumed(emulator):
    e = emulator("e2b", "--isolation", "none", "--fault", "status:503,count=1,path=/x")
    assert request("GET", e.url + "/x")[0] == 503
    assert request("GET", e.url + "/x")[0] != 503
    status, _, _ = request("POST", e.url + "/_emulator/faults", [{"type": "status", "status": 429, "retry_after": 2, "count": 1}])
    assert status == 204
    status, headers, _ = request("GET", e.url + "/anything")
    assert status == 429
    assert headers.get("retry-after") == "2"
    status, _, body = request("GET", e.url + "/_emulator/faults")
    assert status == 200 and json.loads(body) == []
