"""Property-based test of the gateway's REST API against its own OpenAPI
document, with schemathesis (PyPI), written by others from the OpenAPI spec.

Schemathesis reads the document the gateway serves and generates requests
from it: conforming ones (which must be accepted: 2xx, or 404 for a name that
is well formed but not configured) and non-conforming ones (which must be
refused with a 4xx). On every answer it checks: no 5xx, the status is one the
document lists for that operation, the content type and the body match the
document (errors included), and with tokens, that a call without one is
refused.

Two gateways:
- `ferrite demo` without tokens: the document must declare no security, and
  every route answers without a token (loopback only).
- a gateway with an admin token: the document declares bearer auth; every
  generated call carries the token, and schemathesis checks that the same
  calls without it are refused (401).

Usage: python3 api_properties.py FERRITE SCHEMATHESIS [--examples N]
The demo's fixed ports (1883, 1884, 8090) must be free.
"""
import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Checks, free_port, http

ROOT = Path(__file__).resolve().parents[2]
# Everything schemathesis can check about an answer. Left out:
# - `use_after_free`, `ensure_resource_availability` (stateful links between
#   operations, which the document does not declare);
# - `response_headers_conformance`: no operation declares response headers.
CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "ignored_auth",
])
# The live stream (server-sent events) never ends by design, and a CPU
# profile takes seconds by design; their own tests are in
# tests/observability.rs.
EXCLUDE_PATH_REGEX = r"/stream$|/debug/pprof/profile$"


def until(probe, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if probe():
            return True
        time.sleep(0.2)
    return False


def run_schemathesis(schemathesis, base, examples, headers, label):
    args = [
        schemathesis, "--config-file", str(Path(__file__).with_name("schemathesis.toml")),
        "run", f"{base}/api/v1/openapi.json",
        "--checks", CHECKS,
        "--exclude-path-regex", EXCLUDE_PATH_REGEX,
        "--max-examples", str(examples),
        "--phases", "examples,coverage,fuzzing",
        "--request-timeout", "15",
        "--workers", "1",
        "--seed", "20261202",
        "--generation-database", "none",
        "--no-color",
        "--output-truncate", "true",
    ]
    for h in headers:
        args += ["--header", h]
    print(f"\n--- schemathesis: {label}\n" + " ".join(args[1:]), flush=True)
    return subprocess.run(args).returncode


def document_security(base, headers):
    import urllib.request
    import json
    req = urllib.request.Request(f"{base}/api/v1/openapi.json")
    for h in headers:
        name, value = h.split(":", 1)
        req.add_header(name, value.strip())
    with urllib.request.urlopen(req, timeout=10) as res:
        doc = json.loads(res.read())
    schemes = (doc.get("components") or {}).get("securitySchemes") or {}
    guarded = [
        f"{method.upper()} {path}"
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if isinstance(op, dict) and (op.get("security") or doc.get("security"))
    ]
    return schemes, guarded


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("ferrite")
    parser.add_argument("schemathesis")
    parser.add_argument("--examples", type=int, default=100)
    args = parser.parse_args()
    checks = Checks()
    work = Path(tempfile.mkdtemp(prefix="ferrite-api-properties-"))

    # 1. The demo, without tokens.
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(work / "demo.log", "w")
    demo = subprocess.Popen([args.ferrite, "demo", "--listen", f"127.0.0.1:{port}",
                             "--data-dir", str(work / "demo-data")], stdout=log, stderr=log)
    try:
        serving = until(lambda: http("GET", f"{base}/readyz")[0] == 200, 60)
        checks.check("ferrite demo serves", serving, (work / "demo.log").read_text()[-2000:])
        if serving:
            schemes, guarded = document_security(base, [])
            checks.check("without tokens, the document declares no security", not schemes and not guarded,
                         (schemes, guarded[:5]))
            rc = run_schemathesis(args.schemathesis, base, args.examples, [], "ferrite demo, no tokens")
            checks.check("schemathesis finds nothing against the demo (no tokens)", rc == 0, f"exit {rc}")
            checks.check("the demo still serves after it", http("GET", f"{base}/readyz")[0] == 200)
    finally:
        demo.terminate()
        demo.wait(timeout=30)

    # 2. A gateway with an admin token, on the demo's project.
    token = "api-properties-admin-token"
    project = work / "guarded"
    subprocess.run(["cp", "-r", str(ROOT / "examples" / "demo"), str(project)], check=True)
    config = project / "ferrite.toml"
    text = config.read_text()
    text += (
        f'\n[[api.tokens]]\nname = "admin"\nrole = "admin"\n'
        f'token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
    )
    config.write_text(text)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(work / "guarded.log", "w")
    gateway = subprocess.Popen([args.ferrite, "run", "--config", str(config), "--listen", f"127.0.0.1:{port}"],
                               stdout=log, stderr=log, cwd=project)
    try:
        serving = until(lambda: http("GET", f"{base}/readyz")[0] == 200, 60)
        checks.check("the gateway with a token serves", serving, (work / "guarded.log").read_text()[-2000:])
        if serving:
            header = f"Authorization: Bearer {token}"
            schemes, guarded = document_security(base, [header])
            checks.check("with tokens, the document declares bearer auth", "bearer" in schemes and guarded,
                         (schemes, guarded[:5]))
            status, body = http("GET", f"{base}/api/v1/devices")
            checks.check("a call without the token is refused with 401 in the error shape",
                         status == 401 and isinstance(body, dict) and "code" in body.get("error", {}),
                         (status, body))
            rc = run_schemathesis(args.schemathesis, base, args.examples, [header],
                                  "a gateway with an admin token")
            checks.check("schemathesis finds nothing against the guarded gateway", rc == 0, f"exit {rc}")
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())
