"""What the campaigns share: HTTP that survives a gateway killed mid-answer,
and a property's whole history, paged."""
import sys
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
from common import http as _http  # noqa: E402


def http(method, url, body=None):
    """common.http, with any broken answer (a killed gateway) as status 0."""
    try:
        return _http(method, url, body)
    except Exception:  # noqa: BLE001 - a broken answer is "no answer"
        return 0, None


def history(base, device, prop="count"):
    """Every stored reading of device.prop, oldest first, paging by time.
    Raises RuntimeError if a page cannot be read."""
    out, since = [], None
    while True:
        query = {"limit": "10000"}
        if since:
            query["since"] = since
        status, page = http("GET", f"{base}/api/v1/devices/{device}/properties/{prop}/history?"
                                   + urllib.parse.urlencode(query))
        if status != 200:
            raise RuntimeError(f"history of {device}.{prop}: HTTP {status} {page}")
        fresh = [p for p in page if not out or p["ts"] > out[-1]["ts"]]
        out.extend(fresh)
        if len(page) < 10000 or not fresh:
            return out
        since = page[-1]["ts"]
