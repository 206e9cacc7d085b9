"""The operator-facing documentation agrees with the binary: every error code has its row (with
the Connection column) in docs/troubleshooting.md, every metric family the proxy exposes is in
docs/operations.md with a suggested alert, the systemd unit creates the log directory, and the
team-gateway configuration of docs/deployment.md passes `check` as written (only the file paths
moved to test files)."""
import json
import os
import re
import shutil
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import proxytest as pt  # noqa: E402

DOCS = os.path.join(h.SOURCE_DIR, "docs")


def read(*parts):
    with open(os.path.join(h.SOURCE_DIR, *parts)) as f:
        return f.read()


def table_rows(text, first_cell):
    """Rows of the markdown tables in text whose first cell matches first_cell (a regex), as
    lists of cells."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and re.fullmatch(first_cell, cells[0]):
            rows.append(cells)
    return rows


class OperatorDocs(unittest.TestCase):
    def test_every_error_code_has_a_row_with_its_connection(self):
        codes = re.findall(r'"(PROXY_[A-Z_]+)"', read("proxy", "http_error.c"))
        self.assertIn("PROXY_HTTP_VERSION_NOT_SUPPORTED", codes)
        doc = read("docs", "troubleshooting.md")
        header = [r for r in table_rows(doc, "status")]
        self.assertEqual(header, [["status", "code", "meaning", "what to do", "Connection"]])
        rows = {r[1].strip("`"): r for r in table_rows(doc, r"\d{3}")}
        for code in codes:
            with self.subTest(code=code):
                self.assertIn(code, rows, "no row for %s in docs/troubleshooting.md" % code)
                self.assertEqual(len(rows[code]), 5, rows[code])
                self.assertRegex(rows[code][4], r"^(open|closed)")

    def test_every_metric_family_is_documented_with_an_alert_column(self):
        st = h.Stack(admin_listen="127.0.0.1:0")
        try:
            self.assertEqual(st.request("GET", "/v1/apps").status, 200)
            m = pt.metrics(st.proxy)
        finally:
            st.stop()
        doc = read("docs", "operations.md")
        rows = {r[0].strip("`"): r for r in table_rows(doc, r"`[a-z0-9_]+`")}
        for fam in m.types:
            with self.subTest(family=fam):
                self.assertIn(fam, rows, "%s is not in docs/operations.md's table" % fam)
                self.assertEqual(rows[fam][1], m.types[fam], "the documented type of " + fam)
                self.assertEqual(len(rows[fam]), 5, rows[fam])

    def test_systemd_unit_creates_its_log_directory_and_reloads(self):
        unit = read("docs", "examples", "systemd", "apple-auth-proxy.service")
        self.assertRegex(unit, r"(?m)^LogsDirectory=apple-auth-proxy$")
        self.assertRegex(unit, r"(?m)^ExecReload=/bin/kill -HUP \$MAINPID$")

    def test_log_level_variable_is_in_the_configuration_table(self):
        rows = table_rows(read("docs", "configuration.md"), "`APPLE_AUTH_PROXY_LOG_LEVEL`")
        self.assertEqual(len(rows), 1)
        self.assertIn("debug", rows[0][1])

    def test_gateway_configuration_passes_check_as_written(self):
        doc = read("docs", "deployment.md")
        section = doc[doc.index("### The configuration"):doc.index("#### The exposure rule")]
        text = re.search(r"```json\n(.*?)```", section, re.S).group(1)
        d = h.new_dir("gateway-doc")
        certs = h.get_certs()
        key = h.make_key()
        moved = {}
        # every file the configuration names, at a test path with the same base name
        for path in re.findall(r'"(/(?:etc|run|var)/[^"]+)"', text):
            base = os.path.basename(path)
            local = os.path.join(d, base)
            if base.endswith(".p8"):
                shutil.copy(key.private_path, local)
                os.chmod(local, 0o600)
            elif base == "server.pem":
                shutil.copy(certs["good_cert"], local)
            elif base == "server.key":
                shutil.copy(certs["good_key"], local)
                os.chmod(local, 0o600)
            elif base == "clients-ca.pem":
                shutil.copy(certs["ca_cert"], local)
            elif base == "access.log":
                local = os.path.join(d, "log", base)
                os.mkdir(os.path.dirname(local))
            else:
                self.fail("the configuration names a file this test does not know: " + path)
            moved[path] = local
        for path, local in moved.items():
            text = text.replace('"%s"' % path, json.dumps(local))
        cfg = os.path.join(d, "config.json")
        with open(cfg, "w") as f:
            f.write(text)
        rc, out, err = h.run_cli(["check", "-c", cfg])
        self.assertEqual(rc, 0, (out, err))
        self.assertEqual(out.strip().splitlines()[-1], "check: ok", out)
        self.assertIn("client dashboard: identified by secret; allowed GET /v1/apps, GET "
                      "/v1/builds", out)
        self.assertRegex(out, r"route 1: / -> https://api\.appstoreconnect\.apple\.com "
                              r"\(credential asc, client_scopes\)")


if __name__ == "__main__":
    unittest.main()
