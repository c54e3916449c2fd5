#!/usr/bin/env python3
"""The console in a real browser: headless Debian chromium driven by playwright, checked by axe-core.

Run by tests/console.rs (`browser_walks_through_a_failure`) against a running service that holds
exactly one failed `order.created` message; scripts/setup.sh installs chromium, playwright and
axe-playwright-python. Walks what an operator does when an alert fires:

  log in -> overview lists every queue -> failures -> the message's group -> the message ->
  edit the payload and retry -> resolved, with a link to the copy;
  a read-only login sees the same pages without a single action button;
  every page: no serious or critical axe-core violation; screenshots of each.

Exit status 0 when every check holds; the first failed check is printed.
"""
import argparse
import json
import pathlib
import sys

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import sync_playwright

AXE = Axe()


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def accessible(page, name, shots):
    """No serious or critical axe violation on the current page; a full-page screenshot."""
    results = AXE.run(page)
    bad = [v for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
    for violation in bad:
        print(f"axe {name}: {violation['impact']} {violation['id']}: {violation['help']}", file=sys.stderr)
        for node in violation["nodes"][:3]:
            print(f"    {node['target']}", file=sys.stderr)
    check(not bad, f"{name}: {len(bad)} serious or critical accessibility violation(s)")
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    print(f"ok {name}: no serious or critical axe violation ({len(results.response['passes'])} rules pass)")


def login(page, base, token):
    page.goto(f"{base}/console/login")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base}/console/")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the service's base URL, e.g. http://127.0.0.1:8011")
    parser.add_argument("--admin-token", required=True)
    parser.add_argument("--reader-token", required=True)
    parser.add_argument("--queues", type=int, required=True, help="service queues the overview must list")
    parser.add_argument("--screenshots", required=True, help="directory for the PNGs")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    shots = pathlib.Path(args.screenshots)
    shots.mkdir(parents=True, exist_ok=True)
    base = args.base

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        admin = browser.new_page(viewport={"width": 1280, "height": 800})

        admin.goto(f"{base}/console/login")
        accessible(admin, "login", shots)
        login(admin, base, args.admin_token)
        rows = admin.locator("table tbody tr")
        check(rows.count() == args.queues, f"overview lists {rows.count()} queues, not {args.queues}")
        accessible(admin, "overview", shots)

        admin.get_by_role("link", name="Failures").first.click()
        group = admin.locator("table tbody tr", has_text="order.created")
        check(group.count() == 1, f"{group.count()} failure groups of order.created, not 1")
        accessible(admin, "failures", shots)
        group.get_by_role("link").first.click()
        admin.wait_for_url("**/console/failures/*")
        accessible(admin, "group", shots)
        admin.locator("table tbody tr th a").first.click()
        admin.wait_for_url("**/console/messages/*")
        message_url = admin.url
        check(admin.get_by_role("button", name="Retry now").count() == 1, "an operator sees Retry now")
        accessible(admin, "message", shots)

        # Invalid JSON comes back with the parser's message and the text kept.
        admin.locator("summary", has_text="Edit and retry").click()
        editor = admin.get_by_label("Payload (JSON)")
        payload = json.loads(editor.input_value())
        editor.fill("{not json")
        admin.locator("form button", has_text="Edit and retry").click()
        check(admin.get_by_role("alert").count() >= 1, "invalid JSON is refused with a message")
        check(admin.get_by_label("Payload (JSON)").input_value() == "{not json", "the text is kept")
        accessible(admin, "edit-refused", shots)

        payload["data"]["order_id"] = 4243
        admin.get_by_label("Payload (JSON)").fill(json.dumps(payload, indent=2))
        admin.locator("form button", has_text="Edit and retry").click()
        admin.wait_for_url(message_url)
        flash = admin.get_by_role("status").inner_text()
        check("copy" in flash.lower(), f"the flash names the copy: {flash!r}")
        check(admin.locator(".status").inner_text() == "resolved", "the original is resolved")
        check(admin.get_by_text("Copied as").count() == 1, "the message names its copy")
        accessible(admin, "resolved", shots)

        reader = browser.new_page(viewport={"width": 1280, "height": 800})
        login(reader, base, args.reader_token)
        for path in ["/console/", "/console/failures", message_url.removeprefix(base)]:
            reader.goto(base + path)
            # Log out and the filter form's button are not actions on messages.
            buttons = [b for b in reader.get_by_role("button").all_inner_texts() if b not in ("Log out", "Filter")]
            check(not buttons, f"read-only sees buttons on {path}: {buttons}")
        reader.goto(base + "/console/failures")
        check(reader.get_by_role("link", name="Retry").count() == 0, "read-only sees no bulk retry")
        accessible(reader, "read-only", shots)
        browser.close()
    print("browser walk: ok")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        sys.exit(1)
