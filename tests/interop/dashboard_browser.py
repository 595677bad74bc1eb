"""The dashboard and the API documents, in a real headless Chromium (Debian's
chromium and chromium-driver, driven by Selenium from PyPI), against
`ferrite demo`:

- /api/v1/openapi.json validates as OpenAPI 3.1 (openapi-spec-validator);
- the Swagger UI at /api/docs/ shows every operation the document lists;
- the dashboard at / shows every demo device online, its values change
  live, sparklines draw, a write through the form reaches the device, a
  value outside the model's limits is stopped by the form, a method called
  through its form shows its outputs and is audited, and the page
  fetches nothing from anywhere but the gateway and logs no error;
- "add a device": a try through the real driver (values shown, nothing
  saved), a dead address shown offline with save kept off, then a save that
  adds the device live;
- the control plane's fleet page (the demo's ferrite-cloud) lists the
  gateway online with its backlog, shows its twin, a rollout to a label's
  group with the gateway's state, and filters by label.

Usage: dashboard_browser.py FERRITE [--chromium PATH] [--driver PATH]
The demo's fixed ports (1883, 1884, 8090) must be free.
"""
import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from openapi_spec_validator import validate
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

sys.path.insert(0, str(Path(__file__).parent))
from common import Checks, free_port, http, stop_ferrite  # noqa: E402

DEMO_DEVICES = {"boiler-1", "meter-1", "line-1", "env-1", "tank-1"}


def until(predicate, seconds, step=0.2):
    """Calls `predicate` until it returns something truthy, or time is up."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            result = predicate()
        except WebDriverException:
            result = None
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(step)


def safe(read):
    """`read()`, for a check's detail: the page may be rebuilding it."""
    try:
        return read()
    except WebDriverException as e:
        return f"(the page changed while read: {type(e).__name__})"


def browser(chromium, driver_path):
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    return driver


def cell(driver, device, prop):
    return driver.find_element(By.CSS_SELECTOR, f'article[data-device="{device}"] tr[data-property="{prop}"]')


def token_phase(driver, ferrite, checks):
    """A gateway with [[api.tokens]]: the page asks for a token, and with it
    shows the gateway's status."""
    token = "dashboard-test-token"
    work = Path(tempfile.mkdtemp(prefix="ferrite-dashboard-token-"))
    for sub in ("models", "devices", "rules"):
        (work / sub).mkdir()
    (work / "ferrite.toml").write_text(
        '[gateway]\nid = "guarded"\ndata_dir = "data"\n'
        f'[[api.tokens]]\nname = "viewer"\nrole = "read"\ntoken_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
    )
    port = free_port()
    gateway = subprocess.Popen([ferrite, "run", "--config", str(work / "ferrite.toml"), "--listen", f"127.0.0.1:{port}"],
                               stderr=open(work / "ferrite.log", "w"))
    try:
        base = f"http://127.0.0.1:{port}"
        until(lambda: http("GET", f"{base}/readyz")[0] == 200, 20)
        driver.get(f"{base}/")
        form = until(lambda: driver.find_element(By.ID, "token-form").is_displayed(), 10)
        checks.check("with API tokens, the page asks for one", form, "no token form")
        driver.find_element(By.ID, "token").send_keys(token)
        driver.find_element(By.CSS_SELECTOR, "#token-form button").click()
        shown = until(lambda: "guarded" in driver.find_element(By.ID, "gateway-id").text
                      and "0/0 devices online" in driver.find_element(By.ID, "status-line").text, 15)
        checks.check("with the token, it shows the gateway", shown, driver.find_element(By.CLASS_NAME, "bar").text)
        live = until(lambda: driver.find_element(By.ID, "live").text == "live", 15)
        checks.check("and its live stream is open (the token in a header)", live, driver.find_element(By.ID, "live").text)
    finally:
        stop_ferrite(gateway, checks)


def add_device_phase(driver, base, cards, online, checks):
    """'Add a device' on the page: a try through the driver that saves
    nothing, a dead address shown offline with save kept off, then a save
    that adds the device live."""
    form = driver.find_element(By.ID, "add-device")
    field = lambda name: form.find_element(By.NAME, name)  # noqa: E731

    def fill(name, value):
        field(name).clear()
        field(name).send_keys(value)

    fill("name", "meter-3")
    Select(field("model")).select_by_value("power-meter")
    fill("port", "5020")
    fill("unit", "2")
    field("try").click()
    output = lambda: form.find_element(By.TAG_NAME, "output").text  # noqa: E731
    probed = lambda: {r.get_attribute("data-property"): r.find_element(By.CSS_SELECTOR, "td.value").text  # noqa: E731
                      for r in form.find_elements(By.CSS_SELECTOR, "table.probe tr")}
    tried = until(lambda: output().startswith("online"), 15)
    checks.check("'try it' polls the device through its driver: online", tried, safe(output))
    values = safe(probed)
    checks.check("and shows each value it read", isinstance(values, dict) and len(values) >= 5
                 and all(v not in ("none", "stale", "bad", "") for v in values.values()), values)
    status, _ = http("GET", f"{base}/api/v1/devices/meter-3")
    checks.check("nothing was saved by trying", status == 404, status)
    checks.check("save is offered once the try went well", field("save").is_enabled())

    fill("port", str(free_port()))
    field("try").click()
    offline = until(lambda: output().startswith("offline"), 15)
    checks.check("a dead address shows offline, with the reason", offline and "127.0.0.1" in output(), safe(output))
    checks.check("and save stays off", not field("save").is_enabled())

    fill("port", "5020")
    field("try").click()
    until(lambda: output().startswith("online") and field("save").is_enabled(), 15)
    field("save").click()
    saved = until(lambda: output().startswith("saved: configuration v"), 15)
    checks.check("save applies it through the live configuration", saved, safe(output))
    checks.check("the new device shows up, online", until(lambda: "meter-3" in online(), 20), safe(cards))
    status, body = http("DELETE", f"{base}/api/v1/devices/meter-3")
    checks.check("(removed again through the API)", status == 200 and until(lambda: cards() == DEMO_DEVICES, 20), body)


def fleet_phase(driver, checks):
    """The control plane's fleet page (the demo's ferrite-cloud on 8090)."""
    cloud = "http://127.0.0.1:8090"
    status, doc = http("GET", f"{cloud}/api/v1/openapi.json")
    try:
        validate(doc)
        paths = len(doc["paths"])
        checks.check(f"the control plane's openapi.json validates ({paths} paths)", status == 200 and paths >= 13)
    except Exception as e:  # noqa: BLE001
        checks.check("the control plane's openapi.json validates", False, e)
    driver.get(f"{cloud}/")
    row = lambda: driver.find_element(By.CSS_SELECTOR, '#gateways tr[data-gateway="demo"]')  # noqa: E731
    online = until(lambda: "online" in row().text, 20)
    checks.check("the fleet page lists the demo gateway, online", online, safe(lambda: row().text))
    status, fleet = http("GET", f"{cloud}/api/v1/fleet")
    backlog = fleet["gateways"][0]["backlog"] if status == 200 and fleet["gateways"] else None
    checks.check("with its backlog, as the API has it", backlog is not None and
                 until(lambda: row().find_element(By.CLASS_NAME, "backlog").text.isdigit(), 5), (backlog, safe(lambda: row().text)))
    row().click()
    twin = until(lambda: driver.find_elements(By.CSS_SELECTOR, '#twin-devices table[data-device="boiler-1"] td.reported'), 20)
    checks.check("a click shows the gateway's twin, with reported values", twin, safe(lambda: driver.find_element(By.ID, "twin").text))
    status, body = http("PUT", f"{cloud}/api/v1/gateways/demo/labels", {"site": "demo-plant"})
    checks.check("labels are set through the API", status == 200, body)
    status, body = http("POST", f"{cloud}/api/v1/rollouts",
                        {"selector": {"site": "demo-plant"},
                         "desired": {"device": "boiler-1", "properties": {"setpoint": 61.5}}})
    checks.check("a rollout to the label's group starts", status == 202 and body["gateways"] == 1, body)
    rollout = body.get("id") if status == 202 else None
    item = lambda: driver.find_element(By.CSS_SELECTOR, f'#rollouts li[data-rollout="{rollout}"]')  # noqa: E731
    checks.check("the page lists the rollout", until(lambda: item().text, 10), safe(lambda: driver.find_element(By.ID, "rollouts").text))
    item().click()
    state = lambda: driver.find_element(By.CSS_SELECTOR, '#rollout-gateways tr[data-gateway="demo"] td.state').text  # noqa: E731
    checks.check("and shows the gateway applied it", until(lambda: state() == "applied", 20), safe(state))
    labels = until(lambda: "site=demo-plant" in row().text, 10)
    checks.check("the gateway's row shows its label", labels, safe(lambda: row().text))
    driver.find_element(By.ID, "filter").send_keys("site=elsewhere\n")
    gone = until(lambda: not driver.find_elements(By.CSS_SELECTOR, '#gateways tr[data-gateway="demo"]'), 10)
    checks.check("a label filter that matches nothing empties the list", gone, "")
    resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    foreign = [r for r in resources if not r.startswith(cloud)]
    checks.check("the fleet page fetched nothing from elsewhere", resources and not foreign, foreign)
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    checks.check("and logged no error", not errors, errors)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("ferrite")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--driver", default="/usr/bin/chromedriver")
    args = parser.parse_args()
    checks = Checks()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    work = Path(tempfile.mkdtemp(prefix="ferrite-dashboard-"))
    log = open(work / "ferrite.log", "w")
    gateway = subprocess.Popen([args.ferrite, "demo", "--listen", f"127.0.0.1:{port}", "--data-dir", str(work / "data")], stderr=log, stdout=log)
    driver = None
    try:
        serving = until(lambda: http("GET", f"{base}/api/v1/devices")[0] == 200, 60)
        checks.check("ferrite demo serves", serving, (work / "ferrite.log").read_text()[-2000:])
        if not serving:
            return checks

        # The OpenAPI document.
        with urllib.request.urlopen(f"{base}/api/v1/openapi.json", timeout=10) as res:
            doc = json.loads(res.read())
        try:
            validate(doc)
            checks.check("openapi.json validates (openapi-spec-validator)", True)
        except Exception as e:  # noqa: BLE001 - report whatever the validator says
            checks.check("openapi.json validates (openapi-spec-validator)", False, e)
        operations = sum(1 for item in doc["paths"].values() for m in item if m in ("get", "put", "post", "delete", "patch"))

        driver = browser(args.chromium, args.driver)

        # Swagger UI, served from the binary.
        driver.get(f"{base}/api/docs/")
        shown = until(lambda: len(driver.find_elements(By.CSS_SELECTOR, ".opblock")) == operations, 20)
        checks.check(f"Swagger UI lists all {operations} operations", shown, len(driver.find_elements(By.CSS_SELECTOR, ".opblock")))

        # The dashboard.
        driver.get(f"{base}/")
        cards = lambda: {c.get_attribute("data-device") for c in driver.find_elements(By.CSS_SELECTOR, "article.device")}  # noqa: E731
        checks.check("the dashboard shows every demo device", until(lambda: cards() == DEMO_DEVICES, 20), cards())
        online = lambda: {c.get_attribute("data-device") for c in driver.find_elements(By.CSS_SELECTOR, 'article.device[data-status="online"]')}  # noqa: E731
        checks.check("each shows online", until(lambda: online() == DEMO_DEVICES, 30), online())

        values = lambda: {  # noqa: E731
            (c.get_attribute("data-device"), r.get_attribute("data-property")): r.find_element(By.CSS_SELECTOR, "td.value").text
            for c in driver.find_elements(By.CSS_SELECTOR, "article.device")
            for r in c.find_elements(By.CSS_SELECTOR, "tr[data-property]")
        }
        first = until(lambda: (v := values()) and all(x != "—" for k, x in v.items() if k == ("boiler-1", "temperature")) and v, 20) or {}
        moved = until(lambda: [k for k, x in values().items() if first.get(k) not in (None, x)], 20)
        checks.check("live values change without a reload", bool(moved), first)
        shown = cell(driver, "boiler-1", "temperature").find_element(By.CSS_SELECTOR, "td.value").text
        status, api = http("GET", f"{base}/api/v1/devices/boiler-1/properties/temperature")
        checks.check("a shown value is one the API served", status == 200 and shown not in ("", "—"), (shown, api))

        spark = lambda: len((cell(driver, "boiler-1", "temperature").find_element(By.CSS_SELECTOR, "polyline").get_attribute("points") or "").split())  # noqa: E731
        checks.check("the sparkline draws recent history", until(lambda: spark() >= 3, 20), "no polyline")

        # Nothing drawn past its card, at a laptop's width and at this
        # window's: a write form that did not fit once slid under the next
        # card, its button cut off.
        wider = "return [...document.querySelectorAll('article.device, aside section')].filter(e => e.scrollWidth > e.clientWidth + 1).map(e => (e.querySelector('h2, h3') || {}).textContent + ': ' + e.scrollWidth + ' > ' + e.clientWidth)"  # noqa: E501
        for width in (1280, 1024):
            driver.set_window_size(width, 900)
            over = until(lambda: not driver.execute_script(wider), 5)
            checks.check(f"every card and panel fits its box at {width} px", over, driver.execute_script(wider))
        driver.set_window_size(1400, 1000)

        # Rules. boiler-overheat holds the setpoint while the simulated
        # boiler is hot (from about 20 s after start): disable it from the
        # page, which releases the hold, so that the write below is ours.
        rules = until(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#rules tr[data-rule]")) == 3, 15)
        checks.check("the rules show with their state", rules, driver.find_element(By.ID, "rules").text)
        driver.find_element(By.CSS_SELECTOR, '#rules tr[data-rule="boiler-overheat"] button').click()
        disabled = until(lambda: http("GET", f"{base}/api/v1/rules/boiler-overheat")[1]["enabled"] is False, 10)
        checks.check("a rule disabled from the page is disabled", disabled, http("GET", f"{base}/api/v1/rules/boiler-overheat"))
        shows = until(lambda: "disabled" in driver.find_element(By.CSS_SELECTOR, '#rules tr[data-rule="boiler-overheat"]').text, 10)
        checks.check("and the page shows it", shows, driver.find_element(By.ID, "rules").text)

        # A write through the form.
        row = cell(driver, "boiler-1", "setpoint")
        field = row.find_element(By.CSS_SELECTOR, "form.write input")
        checks.check("the form carries the model's limits", (field.get_attribute("min"), field.get_attribute("max")) == ("20", "90"), (field.get_attribute("min"), field.get_attribute("max")))
        field.clear()
        field.send_keys("55.5")
        row.find_element(By.CSS_SELECTOR, "form.write button").click()
        said = until(lambda: row.find_element(By.CSS_SELECTOR, "form.write output").text in ("written", "sent") and row.find_element(By.CSS_SELECTOR, "form.write output").text, 15)
        checks.check("a write through the form is confirmed", said == "written", row.find_element(By.CSS_SELECTOR, "form.write output").text)
        status, body = http("GET", f"{base}/api/v1/devices/boiler-1/properties/setpoint")
        checks.check("the device has the value (REST)", status == 200 and body["value"] == 55.5, body)
        checks.check("the dashboard shows it", until(lambda: cell(driver, "boiler-1", "setpoint").find_element(By.CSS_SELECTOR, "td.value").text == "55.5", 10), cell(driver, "boiler-1", "setpoint").text)
        status, audit = http("GET", f"{base}/api/v1/audit?device=boiler-1&limit=1")
        checks.check("the audit log has it", status == 200 and audit and audit[0]["new"] == 55.5, audit)

        # Outside the limits: the form does not send it.
        field.clear()
        field.send_keys("95")
        row.find_element(By.CSS_SELECTOR, "form.write button").click()
        overflow = driver.execute_script("return arguments[0].validity.rangeOverflow", field)
        time.sleep(1)
        status, body = http("GET", f"{base}/api/v1/devices/boiler-1/properties/setpoint")
        checks.check("a value above max is stopped by the form", overflow and body["value"] == 55.5, (overflow, body))

        # A method call through the form (line-1's start_batch).
        form = driver.find_element(By.CSS_SELECTOR, 'article[data-device="line-1"] form.call[data-method="start_batch"]')
        batch = form.find_element(By.CSS_SELECTOR, 'input[name="batch"]')
        parts = form.find_element(By.CSS_SELECTOR, 'input[name="parts"]')
        checks.check("the method form carries the input's limits", (parts.get_attribute("min"), parts.get_attribute("max")) == ("1", "10000"), (parts.get_attribute("min"), parts.get_attribute("max")))
        batch.send_keys("B-9")
        parts.send_keys("12")
        form.find_element(By.TAG_NAME, "button").click()
        answered = until(lambda: form.find_element(By.TAG_NAME, "output").text not in ("", "…") and form.find_element(By.TAG_NAME, "output").text, 15)
        checks.check("a method called through the form shows its outputs", answered == "batch: B-9, parts: 12", form.find_element(By.TAG_NAME, "output").text)
        status, audit = http("GET", f"{base}/api/v1/audit?device=line-1&limit=1")
        checks.check("the audit log has the call", status == 200 and audit and audit[0].get("method") == "start_batch" and audit[0].get("inputs") == {"batch": "B-9", "parts": 12}, audit)
        parts.clear()
        parts.send_keys("20000")
        form.find_element(By.TAG_NAME, "button").click()
        overflow = driver.execute_script("return arguments[0].validity.rangeOverflow", parts)
        time.sleep(1)
        status, audit = http("GET", f"{base}/api/v1/audit?device=line-1&limit=1")
        checks.check("an input above max is stopped by the form", overflow and audit and audit[0].get("inputs", {}).get("parts") == 12, (overflow, audit))

        # Events, sync.
        synced = until(lambda: "yes" in driver.find_element(By.ID, "sync").text, 20)
        checks.check("the sync panel shows the control plane connected", synced, driver.find_element(By.ID, "sync").text)
        checks.check("the events list is there", until(lambda: driver.find_elements(By.CSS_SELECTOR, "#events li"), 10), "")

        # Nothing from elsewhere, no errors.
        resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        foreign = [r for r in resources if not r.startswith(base)]
        checks.check("the page fetched nothing from outside the gateway", resources and not foreign, foreign)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        checks.check("the browser console shows no error", not errors, errors)

        # Live configuration: a device added through the API shows up with
        # its readings, and goes when it is removed; the page says which
        # configuration version it shows.
        meter2 = {"kind": "Device", "name": "meter-2", "model": "power-meter", "poll": "1s",
                  "modbus-tcp": {"host": "127.0.0.1", "port": 5020, "unit": 2}}
        status, body = http("PUT", f"{base}/api/v1/devices/meter-2", meter2)
        checks.check("a device added through the API is applied", status == 200 and body["changed"], body)
        version = body["version"] if status == 200 else None
        shown = until(lambda: "meter-2" in online(), 20)
        checks.check("the dashboard shows the added device, online", shown, safe(cards))
        checks.check("with its readings", until(lambda: values().get(("meter-2", "energy"), "—") != "—", 20), safe(values))
        line = lambda: driver.find_element(By.ID, "config-line").text  # noqa: E731
        checks.check("and the configuration version", until(lambda: f"configuration v{version}" in line(), 15), safe(line))
        status, body = http("DELETE", f"{base}/api/v1/devices/meter-2")
        checks.check("removed through the API", status == 200, body)
        checks.check("the dashboard drops it", until(lambda: cards() == DEMO_DEVICES, 20), safe(cards))
        checks.check("and shows every other device online again", until(lambda: online() == DEMO_DEVICES, 20), safe(online))

        add_device_phase(driver, base, cards, online, checks)
        fleet_phase(driver, checks)
        token_phase(driver, args.ferrite, checks)
    finally:
        if driver is not None:
            driver.quit()
        stop_ferrite(gateway, checks)
    return checks


if __name__ == "__main__":
    sys.exit(main().finish())
