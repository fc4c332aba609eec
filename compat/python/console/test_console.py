"""The admin console (`/console/`) in a real browser: headless Chromium from the Debian packages
(/usr/bin/chromium, /usr/bin/chromedriver) driven by Selenium, with axe-core from
compat/console/node_modules for the accessibility checks and the released Python SDK
(azure-communication-identity 1.5.0) for what the console must change on the API side.

One browser serves the whole module. HTTP statuses of the pages the browser loads come from
Chromium's performance log (Network.responseReceived of each document); plain HTTP requests
(`requests`, trusting the server's CA) check headers, cookie replay and forged POSTs. Screenshots
of every page, wide and 360 px narrow, are written to target/console-screenshots/ (plus
failed-<test>.png when a test fails).

The tests run in file order and share the server of compat/python/conftest.py: the audit test runs
before the pagination test creates 120 identities, and the key regeneration test, which
replaces the primary key (and so `server.connection_string`), runs last but for --no-console.
"""

import json
import os
import re
import time
import urllib.parse
from html.parser import HTMLParser

import pytest
import requests
from azure.communication.identity import CommunicationIdentityClient, CommunicationUserIdentifier
from azure.core.exceptions import HttpResponseError
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from callsign_testlib import jwt_payload, new_guid
from conftest import REPO_ROOT, running_server

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
AXE = os.path.join(REPO_ROOT, "compat", "console", "node_modules", "axe-core", "axe.min.js")
SCREENSHOTS = os.path.join(REPO_ROOT, "target", "console-screenshots")
WIDE = (1280, 900)
NARROW = 360
WAIT = 10
SESSION_COOKIE = "callsign_session"
# The api-version that takes a customId when creating an identity.
CUSTOM_ID_API = "api-version=2025-03-02-preview"

NAV = {
    "nav-overview": "/console/",
    "nav-identities": "/console/identities",
    "nav-signing-keys": "/console/signing-keys",
    "nav-audit": "/console/audit",
    "nav-rates": "/console/rates",
}
SCOPE_BOXES = ["scope-chat", "scope-voip", "scope-chat-join", "scope-chat-join-limited",
               "scope-voip-join"]
AUDIT_OPERATIONS = ["createIdentity", "deleteIdentity", "revokeTokens", "regenerateKey",
                    "rotateSigningKey", "issueToken", "consoleLogin", "consoleLogout"]


# --- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def driver():
    """Headless Chromium from /usr/bin, its chromedriver from /usr/bin: Selenium Manager is
    skipped (the Service names the driver) and told to stay offline in case it ran anyway."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail("%s is missing: apt-get install chromium chromium-driver" % path)
    if not os.path.isfile(AXE):
        pytest.fail("%s is missing: run `npm ci` in compat/console (compat/run.sh does)" % AXE)
    os.environ["SE_OFFLINE"] = "true"
    os.makedirs(SCREENSHOTS, exist_ok=True)
    for name in os.listdir(SCREENSHOTS):  # the artifacts are this run's only
        if name.endswith(".png"):
            os.remove(os.path.join(SCREENSHOTS, name))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.add_argument("--headless=new")
    options.add_argument("--no-sandbox")  # the suites run as root in CI
    options.add_argument("--disable-dev-shm-usage")  # containers with a small /dev/shm
    options.add_argument("--window-size=%d,%d" % WIDE)
    options.accept_insecure_certs = True  # the server's certificate comes from its local CA
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture(autouse=True)
def screenshot_on_failure(request):
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before and "driver" in request.fixturenames:
        browser = request.getfixturevalue("driver")
        try:
            browser.save_screenshot(os.path.join(SCREENSHOTS, "failed-%s.png" % request.node.name))
        except Exception:  # the browser itself may be what failed
            pass


@pytest.fixture
def sdk(server):
    """The released SDK on the resource's current primary key."""
    return CommunicationIdentityClient.from_connection_string(server.connection_string)


# --- helpers --------------------------------------------------------------------------------

def base(server):
    return server.endpoint.rstrip("/")


def url(server, path):
    return base(server) + path


def path_of(address):
    return urllib.parse.urlsplit(address).path


def document_chain(entries):
    """(url, status) of each document response in Chromium's performance log, redirects
    included, in order."""
    chain = []
    for entry in entries:
        msg = json.loads(entry["message"])["message"]
        params = msg.get("params", {})
        if params.get("type") != "Document":
            continue
        if msg["method"] == "Network.requestWillBeSent" and params.get("redirectResponse"):
            chain.append((params["redirectResponse"]["url"], params["redirectResponse"]["status"]))
        elif msg["method"] == "Network.responseReceived":
            chain.append((params["response"]["url"], params["response"]["status"]))
    return chain


def navigate(driver, action):
    """Runs `action` (a click, a key press, driver.get), waits until another document has
    loaded and returns its (url, status) chain; the last entry is the page now shown."""
    driver.get_log("performance")  # drop what came before
    marker = new_guid()
    driver.execute_script("window.__callsignTestPage = arguments[0];", marker)

    def loaded(d):
        try:
            return d.execute_script(
                "return window.__callsignTestPage !== arguments[0]"
                " && document.readyState === 'complete';", marker)
        except WebDriverException:  # between two documents
            return False

    action()
    WebDriverWait(driver, WAIT).until(loaded)
    chain = document_chain(driver.get_log("performance"))
    assert chain, "no document response was logged"
    return chain


def open_page(driver, server, path):
    return navigate(driver, lambda: driver.get(url(server, path)))


def submit(driver, selector):
    button = driver.find_element(By.CSS_SELECTOR, selector)
    return navigate(driver, button.click)


def status(chain):
    return chain[-1][1]


def assert_redirected(chain, driver, path):
    """A 302/303 redirect, then the page at `path` answered 200."""
    shown = driver.find_elements(By.CSS_SELECTOR, "#error")
    why = " (#error: %s)" % shown[0].text.strip() if shown else ""
    assert any(code in (302, 303) for _, code in chain[:-1]), "no redirect: %r%s" % (chain, why)
    last_url, last_status = chain[-1]
    assert path_of(last_url) == path and last_status == 200, (chain, why)


def element(driver, selector):
    try:
        return driver.find_element(By.CSS_SELECTOR, selector)
    except NoSuchElementException:
        raise AssertionError("no %s on %s" % (selector, driver.current_url)) from None


def text_of(driver, selector):
    return element(driver, selector).text.strip()


def value_of(driver, selector):
    return element(driver, selector).get_property("value")


def is_readonly(el):
    return el.get_dom_attribute("readonly") is not None


def error_text(driver):
    err = element(driver, "#error")
    assert err.get_dom_attribute("role") == "alert", "#error needs role=alert"
    assert err.text.strip(), "#error is empty"
    return err.text.strip()


def assert_no_error(driver):
    assert not driver.find_elements(By.CSS_SELECTOR, "#error"), (
        "unexpected #error on %s: %s" % (driver.current_url, text_of(driver, "#error")))


def assert_csrf_field(driver, form_selector):
    fields = driver.find_elements(By.CSS_SELECTOR, form_selector + ' input[name="csrf"]')
    assert len(fields) == 1, "%s must carry one csrf field" % form_selector
    assert fields[0].get_dom_attribute("type") == "hidden"
    assert fields[0].get_property("value"), "%s: empty csrf" % form_selector


def assert_chrome(driver):
    """The navigation and the logout form every logged-in page has."""
    for nav_id, path in NAV.items():
        link = element(driver, "nav #" + nav_id)
        assert path_of(link.get_attribute("href")) == path, (nav_id, link.get_attribute("href"))
    element(driver, "#logout-form #logout")
    assert_csrf_field(driver, "#logout-form")


def forget_cookies(driver):
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})


def login(driver, server, secret=None, fresh=False):
    """Logs in through the form (with the connection string unless told otherwise) unless the
    browser already has a session; returns the chain of the submission or None."""
    if fresh:
        forget_cookies(driver)
    chain = open_page(driver, server, "/console/")
    if path_of(driver.current_url) != "/console/login":
        assert status(chain) == 200, chain
        return None
    field = element(driver, "#login-form #key")
    field.clear()
    field.send_keys(secret or server.connection_string)
    chain = submit(driver, "#login-submit")
    assert_redirected(chain, driver, "/console/")
    return chain


def session_cookie(driver):
    cookie = driver.get_cookie(SESSION_COOKIE)
    assert cookie, "no %s cookie: %r" % (SESSION_COOKIE, driver.get_cookies())
    return cookie["value"]


def http(server, method, path_or_url, cookie=None, data=None, headers=None, multipart=False):
    """One plain HTTPS request (the fixture's CA, no redirects followed)."""
    target = path_or_url if path_or_url.startswith("https://") else url(server, path_or_url)
    all_headers = dict(headers or {})
    if cookie is not None:
        all_headers["Cookie"] = "%s=%s" % (SESSION_COOKIE, cookie)
    kwargs = {}
    if data is not None:
        if multipart:
            kwargs["files"] = [(k, (None, v)) for k, v in data]
        else:  # encoded here so that an empty form is still a form
            kwargs["data"] = urllib.parse.urlencode(data)
    return requests.request(method, target, headers=all_headers, verify=server.ca_path,
                            allow_redirects=False, timeout=10, **kwargs)


def follow(server, resp, cookie):
    """Follows one redirect of a plain request with the same cookie."""
    if resp.status_code in (302, 303):
        location = urllib.parse.urljoin(resp.url, resp.headers["Location"])
        return http(server, "GET", location, cookie=cookie)
    return resp


class _Ids(HTMLParser):
    """Elements with an id in a page: id -> (attributes, text)."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
            "track", "wbr"}

    def __init__(self):
        super().__init__()
        self.found = {}
        self.stack = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.found[attrs["id"]] = [attrs, ""]
        if tag not in self.VOID:
            self.stack.append((tag, attrs.get("id")))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break

    def handle_data(self, data):
        for _, el_id in self.stack:
            if el_id:
                self.found[el_id][1] += data


def ids_in(html):
    parser = _Ids()
    parser.feed(html)
    return {k: (attrs, " ".join(text.split())) for k, (attrs, text) in parser.found.items()}


def form_data(driver, form_selector):
    """What the browser would submit for a form: (action URL, enctype, [(name, value)])."""
    form = element(driver, form_selector)
    assert (form.get_dom_attribute("method") or "").lower() == "post", form_selector
    pairs = driver.execute_script(
        "return Array.from(new FormData(arguments[0]).entries())"
        ".map(([k, v]) => [k, String(v)]);", form)
    return (form.get_property("action"), form.get_property("enctype"),
            [tuple(p) for p in pairs])


def forged_post(server, driver, form_selector, cookie, csrf="keep", origin="same"):
    """POSTs a form's own fields with a plain client: the csrf field kept, dropped (None) or
    replaced; an Origin of the server, a foreign one or none."""
    action, enctype, pairs = form_data(driver, form_selector)
    if csrf is None:
        pairs = [(k, v) for k, v in pairs if k != "csrf"]
    elif csrf != "keep":
        pairs = [(k, csrf if k == "csrf" else v) for k, v in pairs]
    headers = {}
    if enctype != "multipart/form-data":
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if origin == "same":
        headers["Origin"] = base(server)
    elif origin:
        headers["Origin"] = origin
    return http(server, "POST", action, cookie=cookie, data=pairs, headers=headers,
                multipart=enctype == "multipart/form-data")


def create_identity(server, custom_id=None):
    if custom_id is None:
        status_code, body = server.signed_request("POST", "/identities?api-version=2023-10-01",
                                                  {})
    else:
        status_code, body = server.signed_request("POST", "/identities?" + CUSTOM_ID_API,
                                                  {"customId": custom_id})
    assert status_code == 201, (status_code, body)
    return body["identity"]["id"]


def identity_path(raw_id):
    return "/console/identities/" + urllib.parse.quote(raw_id, safe="")


def assert_identity_page(driver, raw_id):
    assert urllib.parse.unquote(path_of(driver.current_url)) == "/console/identities/" + raw_id
    assert text_of(driver, "#identity-id") == raw_id


def epoch_of(driver):
    got = text_of(driver, "#revocation-epoch")
    assert re.fullmatch(r"\d+", got), "#revocation-epoch is not a number: %r" % got
    return int(got)


def sdk_status(call):
    """The HTTP status of an SDK call: 200 when it returns, else the error's."""
    try:
        call()
    except HttpResponseError as err:
        return err.status_code
    return 200


def browser_problems(driver):
    """CSP violations and script errors the page logged since the last call."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and e.get("source") in ("security", "javascript")]


def run_axe(driver):
    with open(AXE, encoding="utf-8") as f:
        driver.execute_script(f.read())
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {}).then(r => done({violations: r.violations}),"
        " e => done({error: String(e)}));")
    assert "error" not in result, "axe.run failed: %s" % result.get("error")
    return [v for v in result["violations"] if v["impact"] in ("serious", "critical")]


def describe(violations):
    lines = []
    for v in violations:
        lines.append("%s (%s): %s" % (v["id"], v["impact"], v["help"]))
        for node in v["nodes"][:5]:
            lines.append("    %s: %s" % (node["target"], node.get("failureSummary", "")))
    return "\n".join(lines)


def checkbox(driver, selector, checked=True):
    box = element(driver, selector)
    if box.is_selected() != checked:
        box.click()
    return box


# --- tests ----------------------------------------------------------------------------------

def test_security_headers_and_the_redirect_without_a_session(server, driver):
    resp = http(server, "GET", "/console/")
    assert resp.status_code == 303, resp.status_code
    location = urllib.parse.urljoin(resp.url, resp.headers["Location"])
    assert path_of(location) == "/console/login", location

    forget_cookies(driver)
    chain = open_page(driver, server, "/console/")
    assert chain[0][1] == 303 and path_of(driver.current_url) == "/console/login", chain
    assert status(chain) == 200

    def check_headers(resp, what):
        csp = resp.headers.get("Content-Security-Policy", "")
        directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
        assert directives.get("default-src") == ["'none'"], (what, csp)
        assert "'unsafe-inline'" not in csp, (what, csp)
        cache = [d.strip().lower() for d in resp.headers.get("Cache-Control", "").split(",")]
        assert "no-store" in cache, (what, resp.headers.get("Cache-Control"))
        assert resp.headers.get("X-Frame-Options") == "DENY", (what,
                                                               resp.headers.get("X-Frame-Options"))

    resp = http(server, "GET", "/console/login")
    assert resp.status_code == 200
    check_headers(resp, "/console/login")

    login(driver, server, fresh=True)
    cookie = session_cookie(driver)
    for path in NAV.values():
        resp = http(server, "GET", path, cookie=cookie)
        assert resp.status_code == 200, (path, resp.status_code)
        check_headers(resp, path)


def test_login_refuses_a_bad_key_and_sets_a_strict_session_cookie(server, driver):
    forget_cookies(driver)
    open_page(driver, server, "/console/login")
    element(driver, "#login-form")
    assert element(driver, "#key").get_dom_attribute("name") == "key"
    assert_csrf_field(driver, "#login-form")

    element(driver, "#key").send_keys(server.wrong_key_connection_string())
    chain = submit(driver, "#login-submit")
    assert status(chain) == 401, chain
    assert re.search(r"not valid|invalid", error_text(driver), re.I), error_text(driver)
    assert driver.get_cookie(SESSION_COOKIE) is None, "a bad key must not get a session"

    chain = login(driver, server)  # the whole connection string
    assert chain is not None
    assert path_of(driver.current_url) == "/console/"
    cookie = driver.get_cookie(SESSION_COOKIE)
    assert cookie, driver.get_cookies()
    assert cookie["httpOnly"] is True, cookie
    assert cookie["secure"] is True, cookie
    assert cookie.get("sameSite") == "Strict", cookie
    assert "expiry" in cookie, "the session cookie needs an expiry: %r" % cookie
    assert cookie["expiry"] > time.time(), cookie
    assert not driver.execute_script("return document.cookie.includes(arguments[0])",
                                      SESSION_COOKIE), "HttpOnly cookie visible to scripts"
    assert_chrome(driver)

    # The access key alone is accepted too.
    login(driver, server, secret=server.access_key, fresh=True)
    assert path_of(driver.current_url) == "/console/"


def test_overview_shows_the_resource_and_copies_its_connection_strings(server, driver, sdk):
    login(driver, server)
    open_page(driver, server, "/console/")
    assert_chrome(driver)
    assert text_of(driver, "#resource-id") == server.resource_id
    element(driver, "#resource-name")
    for slot in ("primary", "secondary", "verifyOnly"):
        link = element(driver, "#key-%s a.regenerate" % slot)
        assert path_of(link.get_attribute("href")) == "/console/keys/%s/regenerate" % slot

    primary = element(driver, "input#connection-string-primary")
    secondary = element(driver, "input#connection-string-secondary")
    assert is_readonly(primary) and is_readonly(secondary)
    assert primary.get_property("value") == server.connection_string
    second = secondary.get_property("value")
    assert second.startswith("endpoint=") and ";accesskey=" in second and second != (
        server.connection_string)
    # The secondary string the console shows is a working credential.
    CommunicationIdentityClient.from_connection_string(second).create_user()

    driver.execute_cdp_cmd("Browser.grantPermissions", {
        "origin": base(server),
        "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"],
    })
    buttons = driver.find_elements(By.CSS_SELECTOR, "button.copy")
    assert len(buttons) >= 2, "one copy button per connection string"
    copied = set()
    for button in buttons:
        if not button.is_displayed():  # folded away in a <details>: unfold it as a reader would
            summary = driver.execute_script(
                "const d = arguments[0].closest('details');"
                "return d ? d.querySelector('summary') : null;", button)
            assert summary is not None, "a hidden copy button outside any <details>"
            summary.click()
        driver.execute_async_script(
            "navigator.clipboard.writeText('').then(arguments[0], arguments[0])")
        button.click()
        got = WebDriverWait(driver, WAIT).until(lambda d: d.execute_async_script(
            "const done = arguments[0];"
            "navigator.clipboard.readText().then(done, () => done(''));"))
        copied.add(got)
    assert {server.connection_string, second} <= copied, copied
    assert browser_problems(driver) == []


def test_identity_lifecycle_create_issue_revoke_delete(server, driver, sdk):
    login(driver, server)
    open_page(driver, server, "/console/identities")
    assert_chrome(driver)
    custom = "console-" + new_guid()
    element(driver, "#create-form #custom-id").send_keys(custom)
    assert_csrf_field(driver, "#create-form")
    chain = submit(driver, "#create-submit")
    assert status(chain) == 200, chain
    assert_no_error(driver)

    # Found by its customId prefix, linked by its id.
    open_page(driver, server, "/console/identities")
    element(driver, "#search-form #q").send_keys(custom[:20])
    submit(driver, "#search-submit")
    links = driver.find_elements(By.CSS_SELECTOR, "#identities a.identity-link")
    assert len(links) == 1, [a.text for a in links]
    raw_id = links[0].text.strip()
    assert raw_id.startswith("8:acs:%s_" % server.resource_id), raw_id
    assert urllib.parse.unquote(path_of(links[0].get_attribute("href"))) == (
        "/console/identities/" + raw_id)
    submit(driver, "#identities a.identity-link")
    assert_identity_page(driver, raw_id)
    assert text_of(driver, "#custom-id") == custom
    last_token_before = text_of(driver, "#last-token")
    epoch = epoch_of(driver)
    identity_url = driver.current_url

    # Issue: chat + voip for 75 minutes.
    for box_id in SCOPE_BOXES:
        assert element(driver, "#issue-form #" + box_id).get_dom_attribute("name") == "scope"
    minutes = element(driver, "#issue-form #minutes")
    assert minutes.get_dom_attribute("type") == "number"
    assert (minutes.get_dom_attribute("min"), minutes.get_dom_attribute("max")) == ("60", "1440")
    assert_csrf_field(driver, "#issue-form")
    checkbox(driver, "#scope-chat")
    checkbox(driver, "#scope-voip")
    minutes.clear()
    minutes.send_keys("75")
    issued_at = time.time()
    chain = submit(driver, "#issue-submit")
    assert status(chain) == 200, chain
    assert_no_error(driver)
    token_field = element(driver, "#token")
    assert is_readonly(token_field)
    token = token_field.get_property("value").strip()
    assert text_of(driver, "#token-expires")
    payload = jwt_payload(token)
    assert raw_id[len("8:"):] in json.dumps(payload), payload
    assert abs(payload["exp"] - (issued_at + 75 * 60)) < 120, (payload["exp"], issued_at)
    info = server.assert_active(token)
    assert info.get("id") == raw_id and sorted(info.get("scopes", [])) == ["chat", "voip"], info

    open_page(driver, server, path_of(identity_url))
    assert text_of(driver, "#last-token") != last_token_before, "last token time not updated"
    assert epoch_of(driver) == epoch

    # Revoke: the epoch moves by one and the token is no longer in force.
    assert_csrf_field(driver, "#revoke-form")
    chain = submit(driver, "#revoke-submit")
    assert status(chain) == 200, chain
    assert text_of(driver, "#notice")
    open_page(driver, server, path_of(identity_url))
    assert epoch_of(driver) == epoch + 1
    server.assert_inactive(token, "revoked")

    # Delete: the confirmation is required, in the browser and by the server.
    confirm = element(driver, "#delete-form #delete-confirm")
    assert confirm.get_dom_attribute("required") is not None
    assert_csrf_field(driver, "#delete-form")
    checkbox(driver, "#delete-confirm")
    chain = submit(driver, "#delete-submit")
    assert_redirected(chain, driver, "/console/identities")
    assert text_of(driver, "#notice")
    user = CommunicationUserIdentifier(raw_id)
    assert sdk_status(lambda: sdk.get_token(user, ["chat"])) == 404


def test_csrf_and_foreign_origins_are_refused(server, driver, sdk):
    login(driver, server)
    raw_id = create_identity(server)
    user = CommunicationUserIdentifier(raw_id)
    open_page(driver, server, identity_path(raw_id))
    assert_identity_page(driver, raw_id)
    epoch = epoch_of(driver)
    cookie = session_cookie(driver)
    checkbox(driver, "#delete-confirm")

    def refused(resp, what):
        assert resp.status_code == 403, (what, resp.status_code, resp.text[:300])
        found = ids_in(resp.text)
        assert "error" in found and found["error"][1], (what, resp.text[:300])

    refused(forged_post(server, driver, "#delete-form", cookie, csrf=None), "delete, no csrf")
    refused(forged_post(server, driver, "#delete-form", cookie, csrf="0" * 43),
            "delete, wrong csrf")
    refused(forged_post(server, driver, "#delete-form", cookie, origin="https://evil.example"),
            "delete, foreign Origin")
    refused(forged_post(server, driver, "#revoke-form", cookie, csrf=None), "revoke, no csrf")
    refused(forged_post(server, driver, "#revoke-form", cookie, origin="https://evil.example"),
            "revoke, foreign Origin")
    refused(forged_post(server, driver, "#logout-form", cookie, csrf=None), "logout, no csrf")

    # Nothing changed: the identity exists with its epoch, the session is alive.
    assert sdk_status(lambda: sdk.get_token(user, ["chat"])) == 200
    open_page(driver, server, identity_path(raw_id))
    assert epoch_of(driver) == epoch
    assert http(server, "GET", "/console/", cookie=cookie).status_code == 200

    # The same plain client with the form's own csrf and the server's Origin is accepted, so the
    # refusals above were the csrf's and the Origin's doing.
    resp = follow(server, forged_post(server, driver, "#revoke-form", cookie), cookie)
    assert resp.status_code == 200, (resp.status_code, resp.text[:300])
    assert "notice" in ids_in(resp.text)
    open_page(driver, server, identity_path(raw_id))
    assert epoch_of(driver) == epoch + 1


def test_signing_key_rotation(server, driver):
    login(driver, server)
    open_page(driver, server, "/console/signing-keys")
    assert_chrome(driver)

    def kids():
        return [tr.get_dom_attribute("data-kid")
                for tr in driver.find_elements(By.CSS_SELECTOR, "#signing-keys tr[data-kid]")]

    def jwks_kids():
        resp = http(server, "GET", "/.well-known/jwks.json")
        assert resp.status_code == 200
        return {k["kid"] for k in resp.json()["keys"]}

    before = kids()
    assert before and all(before), before
    assert jwks_kids() <= set(before), (jwks_kids(), before)
    link = element(driver, "#jwks-link")
    assert path_of(link.get_attribute("href")) == "/.well-known/jwks.json"
    assert_csrf_field(driver, "#rotate-form")
    checkbox(driver, "#rotate-confirm")
    chain = submit(driver, "#rotate-submit")
    assert status(chain) == 200, chain
    assert_no_error(driver)
    open_page(driver, server, "/console/signing-keys")
    after = kids()
    assert len(after) == len(before) + 1, (before, after)
    new = set(after) - set(before)
    assert len(new) == 1, (before, after)
    assert new <= jwks_kids(), "the new key is not published in the JWKS"


def test_audit_records_console_and_api_actions(server, driver, sdk):
    login(driver, server)
    api_id = sdk.create_user().properties["id"]
    console_id = create_identity(server)
    open_page(driver, server, identity_path(console_id))
    checkbox(driver, "#delete-confirm")
    submit(driver, "#delete-submit")
    assert text_of(driver, "#notice")

    open_page(driver, server, "/console/audit")
    assert_chrome(driver)
    for field in ("#since", "#until"):
        assert element(driver, "#audit-filter " + field).get_dom_attribute(
            "type") == "datetime-local"
    offered = [o.get_dom_attribute("value")
               for o in Select(element(driver, "#audit-filter #operation")).options]
    assert set(AUDIT_OPERATIONS) <= set(offered), offered

    def filtered(operation, since=None, until=None):
        open_page(driver, server, "/console/audit")
        Select(element(driver, "#operation")).select_by_value(operation)
        for selector, value in (("#since", since), ("#until", until)):
            if value is not None:
                driver.execute_script("arguments[0].value = arguments[1]",
                                      element(driver, selector), value)
        chain = submit(driver, "#audit-submit")
        assert status(chain) == 200, chain
        rows = []
        for tr in driver.find_elements(By.CSS_SELECTOR, "#audit tr.audit-record"):
            rows.append({cell: tr.find_element(By.CSS_SELECTOR, "td." + cell).text.strip()
                         for cell in ("operation", "credential", "identity", "subject")})
        return rows

    rows = filtered("deleteIdentity")
    assert rows and all(r["operation"] == "deleteIdentity" for r in rows), rows
    mine = [r for r in rows if console_id in r["identity"]]
    assert len(mine) == 1, rows
    assert mine[0]["subject"].startswith("console#"), mine
    assert mine[0]["credential"] == "primary", mine

    rows = filtered("createIdentity")
    mine = [r for r in rows if api_id in r["identity"]]
    assert len(mine) == 1, rows
    assert mine[0]["subject"] == "", "an SDK call has no console subject: %r" % mine

    rows = filtered("consoleLogin")
    assert rows, "no consoleLogin record"
    assert all(r["subject"].startswith("console#") for r in rows), rows
    assert all(r["credential"] in ("primary", "secondary") for r in rows), rows

    # The time window: nothing after 2099, everything in 2000..2099.
    assert filtered("deleteIdentity", since="2099-01-01T00:00") == []
    rows = filtered("deleteIdentity", since="2000-01-01T00:00", until="2099-01-01T00:00")
    assert any(console_id in r["identity"] for r in rows), rows


def test_identity_search_pages_and_stale_filter(server, driver, sdk):
    login(driver, server)
    prefix = "page-%s-" % new_guid()[:8]
    created = {create_identity(server, "%s%03d" % (prefix, i)) for i in range(120)}

    def search(q, stale=""):
        open_page(driver, server, "/console/identities")
        if stale:
            Select(element(driver, "#search-form #stale")).select_by_value(stale)
        element(driver, "#search-form #q").send_keys(q)
        chain = submit(driver, "#search-submit")
        assert status(chain) == 200, chain

    def all_pages():
        seen = []
        for _ in range(50):
            for a in driver.find_elements(By.CSS_SELECTOR, "#identities a.identity-link"):
                raw_id = a.text.strip()
                assert urllib.parse.unquote(path_of(a.get_attribute("href"))) == (
                    "/console/identities/" + raw_id)
                seen.append(raw_id)
            if not driver.find_elements(By.CSS_SELECTOR, "a#next-page"):
                return seen
            chain = submit(driver, "a#next-page")
            assert status(chain) == 200, chain
        raise AssertionError("more than 50 pages")

    open_page(driver, server, "/console/identities")
    stale_options = [o.get_dom_attribute("value") or ""
                     for o in Select(element(driver, "#search-form #stale")).options]
    assert stale_options == ["", "7", "30", "90"], stale_options

    search(prefix)
    listed = all_pages()
    assert len(listed) == len(set(listed)), "an identity listed twice across pages"
    assert set(listed) == created

    # An exact id jumps to the identity.
    some = sorted(created)[7]
    search(some)
    assert_identity_page(driver, some)

    # One that just got a token has not been 7 days without one.
    fresh = sorted(created)[0]
    sdk.get_token(CommunicationUserIdentifier(fresh), ["chat"])
    search(prefix, stale="7")
    assert fresh not in all_pages()


def test_rates_page_polls_and_shows_the_issue_route(server, driver, sdk):
    resp = http(server, "GET", "/console/rates.json")
    assert resp.status_code == 401, resp.status_code
    body = resp.json()
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)

    login(driver, server)
    resp = http(server, "GET", "/console/rates.json", cookie=session_cookie(driver))
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith(
        "application/json"), (resp.status_code, resp.headers.get("Content-Type"))
    resp.json()

    open_page(driver, server, "/console/rates")
    assert_chrome(driver)
    for chart in ("requests", "errors", "p99", "tokens"):
        element(driver, "svg#chart-" + chart)
    element(driver, "#route-rates")
    driver.get_log("performance")
    started = time.monotonic()
    user = sdk.create_user()
    for _ in range(5):
        sdk.get_token(user, ["chat"])
    try:
        WebDriverWait(driver, 12).until(lambda d: d.find_elements(
            By.CSS_SELECTOR, '#route-rates tr[data-route="issue"]'))
    except TimeoutException:
        driver.refresh()
        after_reload = bool(driver.find_elements(By.CSS_SELECTOR,
                                                 '#route-rates tr[data-route="issue"]'))
        raise AssertionError("no issue row in #route-rates after 12 s of polling (after a "
                             "reload: %s)" % ("present" if after_reload else "absent"))
    time.sleep(max(0.0, 5.0 - (time.monotonic() - started)))
    for chart in ("requests", "errors", "p99", "tokens"):
        assert driver.execute_script(
            "return document.querySelector(arguments[0]).childElementCount",
            "svg#chart-" + chart), "svg#chart-%s is still empty after the polls" % chart
    polls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.responseReceived" and path_of(
                msg["params"]["response"]["url"]) == "/console/rates.json":
            polls.append(msg["params"]["response"]["status"])
    assert len(polls) >= 2 and set(polls) == {200}, "rates.json polls in ~5 s: %r" % polls
    assert browser_problems(driver) == []


def test_accessibility_narrow_layout_keyboard_login_and_screenshots(server, driver):
    raw_id = create_identity(server)
    failures = []

    def check(name, chain):
        assert status(chain) == 200, (name, chain)
        driver.set_window_size(*WIDE)
        bad = run_axe(driver)
        if bad:
            failures.append("%s (%s):\n%s" % (name, driver.current_url, describe(bad)))
            print("axe, %s:\n%s" % (name, describe(bad)))
        driver.save_screenshot(os.path.join(SCREENSHOTS, name + ".png"))
        driver.set_window_size(NARROW, WIDE[1])
        widths = driver.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth]")
        if widths[0] > widths[1] + 1:
            failures.append("%s: scrolls sideways at %d px (scrollWidth %d)"
                            % (name, widths[1], widths[0]))
        driver.save_screenshot(os.path.join(SCREENSHOTS, name + "-narrow.png"))
        driver.set_window_size(*WIDE)
        problems = browser_problems(driver)
        if problems:
            failures.append("%s: console errors %r" % (name, problems))

    forget_cookies(driver)
    driver.get_log("browser")  # only this test's pages count
    check("login", open_page(driver, server, "/console/login"))

    # Keyboard only: Tab to the key field, type, Enter.
    for _ in range(30):
        if driver.switch_to.active_element.get_attribute("id") == "key":
            break
        ActionChains(driver).send_keys(Keys.TAB).perform()
    assert driver.switch_to.active_element.get_attribute("id") == "key", "Tab never reached #key"
    ActionChains(driver).send_keys(server.access_key).perform()
    chain = navigate(driver, lambda: ActionChains(driver).send_keys(Keys.ENTER).perform())
    assert_redirected(chain, driver, "/console/")

    pages = [
        ("overview", "/console/"),
        ("identities", "/console/identities"),
        ("identity", identity_path(raw_id)),
        ("regenerate", "/console/keys/primary/regenerate"),
        ("signing-keys", "/console/signing-keys"),
        ("audit", "/console/audit"),
        ("rates", "/console/rates"),
    ]
    for name, path in pages:
        chain = open_page(driver, server, path)
        assert path_of(driver.current_url) == path, (name, driver.current_url)
        assert_chrome(driver)
        if name == "rates":  # let the first poll draw the charts before the screenshot
            try:
                WebDriverWait(driver, 5).until(lambda d: d.execute_script(
                    "return document.querySelector('svg#chart-requests').childElementCount"))
            except TimeoutException:
                pass  # test_rates_page_polls_and_shows_the_issue_route reports it
        check(name, chain)
    assert not failures, "\n".join(failures)


def test_logout_ends_the_session(server, driver):
    login(driver, server)
    cookie = session_cookie(driver)
    assert http(server, "GET", "/console/", cookie=cookie).status_code == 200
    chain = submit(driver, "#logout")
    assert path_of(driver.current_url) == "/console/login", chain
    assert status(chain) == 200, chain
    resp = http(server, "GET", "/console/", cookie=cookie)
    assert resp.status_code == 303, resp.status_code
    location = urllib.parse.urljoin(resp.url, resp.headers["Location"])
    assert path_of(location) == "/console/login"
    chain = open_page(driver, server, "/console/")
    assert path_of(driver.current_url) == "/console/login", chain


def test_key_regeneration(server, driver):
    """Runs last: it replaces the primary key, and `server` is updated to the new one."""
    login(driver, server)  # with the primary key, which is regenerated below
    old = server.connection_string
    open_page(driver, server, "/console/")
    secondary = value_of(driver, "#connection-string-secondary")
    before_regen = CommunicationIdentityClient.from_connection_string(old).create_user_and_token(
        ["chat"])[1].token

    submit(driver, "#key-primary a.regenerate")
    assert path_of(driver.current_url) == "/console/keys/primary/regenerate"
    assert_chrome(driver)
    element(driver, "#regenerate-form")
    confirm = element(driver, "#regenerate-form #confirm")
    assert confirm.get_dom_attribute("name") == "confirm"
    assert confirm.get_dom_attribute("required") is not None
    assert element(driver, "#regenerate-form #revoke-tokens").get_dom_attribute(
        "name") == "revoke_tokens"
    assert_csrf_field(driver, "#regenerate-form")

    # Unconfirmed: the browser will not send it; with validation off, the server refuses it.
    element(driver, "#regenerate-submit").click()
    assert path_of(driver.current_url) == "/console/keys/primary/regenerate"
    driver.execute_script("arguments[0].noValidate = true", element(driver, "#regenerate-form"))
    chain = submit(driver, "#regenerate-submit")
    assert status(chain) == 400, chain
    error_text(driver)
    CommunicationIdentityClient.from_connection_string(old).create_user()
    open_page(driver, server, "/console/")
    assert value_of(driver, "#connection-string-primary") == old

    # Confirmed, tokens kept.
    open_page(driver, server, "/console/keys/primary/regenerate")
    checkbox(driver, "#confirm")
    checkbox(driver, "#revoke-tokens", checked=False)
    chain = submit(driver, "#regenerate-submit")
    assert status(chain) == 200, chain
    assert text_of(driver, "#notice")
    field = element(driver, "#new-connection-string")
    assert is_readonly(field)
    new = field.get_property("value").strip()
    assert new != old and new.split(";accesskey=")[0] == old.split(";accesskey=")[0], new
    server.connection_string = new
    server.access_key = new.split(";accesskey=", 1)[1]

    refused = sdk_status(
        lambda: CommunicationIdentityClient.from_connection_string(old).create_user())
    assert refused == 401, "the old primary key still works (%r)" % refused
    CommunicationIdentityClient.from_connection_string(new).create_user()
    assert CommunicationIdentityClient.from_connection_string(secondary).create_user()

    # The session that logged in with the old key goes on.
    chain = open_page(driver, server, "/console/")
    assert path_of(driver.current_url) == "/console/" and status(chain) == 200, chain
    assert value_of(driver, "#connection-string-primary") == new
    assert value_of(driver, "#connection-string-secondary") == secondary
    server.assert_active(before_regen)

    # Confirmed with revoke_tokens: tokens issued before are no longer in force.
    before_second = CommunicationIdentityClient.from_connection_string(
        new).create_user_and_token(["chat"])[1].token
    open_page(driver, server, "/console/keys/primary/regenerate")
    checkbox(driver, "#confirm")
    checkbox(driver, "#revoke-tokens")
    chain = submit(driver, "#regenerate-submit")
    assert status(chain) == 200, chain
    newer = value_of(driver, "#new-connection-string").strip()
    assert newer not in (old, new)
    server.connection_string = newer
    server.access_key = newer.split(";accesskey=", 1)[1]
    assert server.introspect(before_second)["active"] is False
    assert sdk_status(
        lambda: CommunicationIdentityClient.from_connection_string(new).create_user()) == 401
    CommunicationIdentityClient.from_connection_string(newer).create_user()
    open_page(driver, server, "/console/")
    assert path_of(driver.current_url) == "/console/"


def test_no_console_flag_turns_the_console_off():
    with running_server("--no-console") as srv:
        for path in ("/console/", "/console/login", "/console/rates.json"):
            resp = requests.get(srv.endpoint.rstrip("/") + path, verify=srv.ca_path,
                                allow_redirects=False, timeout=10)
            assert resp.status_code == 404, (path, resp.status_code)
        assert requests.get(srv.endpoint.rstrip("/") + "/health", verify=srv.ca_path,
                            timeout=10).status_code == 200
