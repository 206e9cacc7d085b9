#!/usr/bin/python3
"""profile: where apple-auth-proxy spends its time on small keep-alive requests (bench test 1).

Uses the benchmark's setup (bench.py: the TLS upstream, the test CA, the same configurations)
and, for a fixed number of requests made with `h2load --h1 -c 50`:

  strace     syscalls per request of apple-auth-proxy, nginx and HAProxy (strace -c -f on the
             serving process or nginx's worker), side by side;
  callgrind  apple-auth-proxy under valgrind --tool=callgrind (instructions per request, the
             top functions by self and inclusive cost; used when perf has no hardware counters);
  perf       perf record -e cpu-clock (a software clock, so it works in VMs without a PMU) on
             apple-auth-proxy while wrk runs, including kernel time: the top symbols;
  tls        HTTPS listeners (bench test 7): apple-auth-proxy and nginx under callgrind while
             tls_connect.py makes new TLS connections with one request each (full handshakes,
             or resumed ones with --tls-resume): instructions per connection, by object. Not
             in the default modes.
  apns       APNs pushes (bench test 8's setup: HTTP/1.1 in, HTTP/2 to nghttpd, access log
             off): apple-auth-proxy under callgrind while wrk posts pushes from 20 clients for
             --apns-seconds after a warm-up: instructions per push and the top functions. Not
             in the default modes; needs nothing of test 1's setup.

    profile.py [--binary build/apple-auth-proxy] [--modes strace,callgrind,perf,tls,apns]
               [--requests 20000] [--seconds 10] [--tls-seconds 15] [--tls-resume]
               [--apns-seconds 10] [--out DIR]

Raw outputs go to --out (default BUILD/bench-profile/); summaries are printed. A measurement
tool, not a test: nothing is asserted.
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench as B  # noqa: E402


def h2load_n(port, n, conns=50, timeout=600):
    r = subprocess.run(["h2load", "--h1", "-t", "1", "-c", str(conns), "-n", str(n),
                        "http://127.0.0.1:%d/v1/apps" % port], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, universal_newlines=True, timeout=timeout)
    m = re.search(r"status codes: (\d+) 2xx", r.stdout)
    ok = int(m.group(1)) if m else 0
    if ok != n:
        B.log("h2load: %d of %d requests answered 2xx:\n%s" % (ok, n, r.stdout))
    return ok


def parse_strace_c(path):
    """{syscall: (calls, errors)} and the total, from strace -c output."""
    calls = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and re.match(r"^[\d.]+$", parts[0]) and parts[-1] != "total":
                name = parts[-1]
                nums = parts[3:-1]
                n = int(nums[0])
                err = int(nums[1]) if len(nums) > 1 else 0
                calls[name] = (n, err)
    return calls


class Profiler:
    def __init__(self, args):
        self.args = args
        self.out = args.out
        os.makedirs(self.out, exist_ok=True)
        self.bench = B.Bench(args)
        self.bench.prepare()
        self.setup = self.bench.setup

    def close(self):
        self.bench.stop_all()
        self.setup.upstream.stop()
        shutil.rmtree(self.setup.tmp, ignore_errors=True)

    # -- strace ---------------------------------------------------------------------------------
    def strace(self):
        n = self.args.requests
        self.bench.start_all(1)
        results = {}
        for k in self.bench.kinds:
            p = self.bench.proxies[k]
            h2load_n(p.port, 2000)  # warm-up: upstream connections open, buffers allocated
            pids = p.pids()
            serving = pids[1:] if k == "nginx" else pids[:1]  # nginx: the worker, not the master
            path = os.path.join(self.out, "strace-%s.txt" % k)
            argv = ["strace", "-c", "-f", "-o", path]
            for pid in serving:
                argv += ["-p", str(pid)]
            st = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            ok = h2load_n(p.port, n)
            time.sleep(0.5)
            st.send_signal(signal.SIGINT)
            st.wait(30)
            results[k] = (parse_strace_c(path), ok)
        self.bench.stop_all()
        names = sorted({s for calls, _ in results.values() for s in calls},
                       key=lambda s: -max(results[k][0].get(s, (0, 0))[0] for k in results))
        print("Syscalls per request (strace -c -f, %d requests, h2load --h1 -c 50, 1 worker)" % n)
        head = "%-16s" % "syscall" + "".join("%18s" % B.NAMES[k] for k in results)
        print(head)
        print("-" * len(head))
        for s in names:
            row = "%-16s" % s
            for k, (calls, ok) in results.items():
                c, e = calls.get(s, (0, 0))
                row += "%18s" % ("%.2f%s" % (c / ok, " (%.2f err)" % (e / ok) if e else "")
                                 if c else "-")
            print(row)
        row = "%-16s" % "total"
        for k, (calls, ok) in results.items():
            row += "%18.2f" % (sum(c for c, _ in calls.values()) / ok)
        print(row)
        print()

    # -- callgrind ------------------------------------------------------------------------------
    def callgrind_run(self, kinds, warm, load, tag="", **variant):
        """Each proxy in kinds under callgrind: warm(port) uninstrumented, then load(port)
        instrumented, which returns how many requests or connections it made. Returns
        {kind: annotate()} with the figures per request or connection."""
        addr = "127.0.0.1:%d" % self.setup.upstream_port
        summary = {}
        for k in kinds:
            outfile = os.path.join(self.out, "callgrind.out.%s%s.%%p" % (k, tag))
            wrapper = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + outfile,
                       "--instr-atstart=no"]
            before = set(os.listdir(self.out))
            p = B.Proxy(self.setup, k, 1, addr, wrapper=wrapper, start_timeout=120, **variant)
            try:
                # Start-up (keys, TLS contexts) and the warm-up are not instrumented: only the
                # measured load (and the exit) is in the profile.
                warm(p.port)
                serving = p.pids()[:1]  # nginx runs as one process under valgrind
                for pid in serving:
                    subprocess.run(["callgrind_control", "-i", "on", str(pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   check=True)
                t0 = time.monotonic()
                ok = load(p.port)
                B.log("callgrind %s%s: %d in %.1f s" % (k, tag, ok, time.monotonic() - t0))
            finally:
                p.stop(timeout=120)
            dumps = [f for f in set(os.listdir(self.out)) - before if f.startswith("callgrind.out")]
            serving_dumps = [os.path.join(self.out, f) for f in dumps
                             if any(f.endswith(".%d" % pid) for pid in serving)]
            dump = serving_dumps[0] if serving_dumps else os.path.join(self.out, sorted(dumps)[-1])
            summary[k] = self.annotate(k, dump, ok, tag)
        return summary

    @staticmethod
    def print_by_object(summary):
        objs = sorted({o for s in summary.values() for o in s["by_object"]},
                      key=lambda o: -max(s["by_object"].get(o, 0) for s in summary.values()))
        head = "%-34s" % "object" + "".join("%18s" % B.NAMES[k] for k in summary)
        print(head)
        print("-" * len(head))
        for o in objs:
            vals = [summary[k]["by_object"].get(o, 0) for k in summary]
            if max(vals) < 100:
                continue
            print("%-34s" % o[:34] + "".join("%18.0f" % v for v in vals))
        print("%-34s" % "total" + "".join("%18.0f" % summary[k]["per_request"] for k in summary))
        print()

    def callgrind(self):
        n = self.args.callgrind_requests
        summary = self.callgrind_run(self.bench.kinds,
                                     lambda port: h2load_n(port, 500, timeout=900),
                                     lambda port: h2load_n(port, n, timeout=1800))
        print("callgrind: instructions per request (user space, %d requests, h2load --h1 -c 50, "
              "1 worker)" % n)
        self.print_by_object(summary)

    # -- tls: handshakes on HTTPS listeners -------------------------------------------------------
    def tls_connections(self, port, seconds):
        """New TLS connections with one request each for seconds (tls_connect.py, one client
        process); returns how many were made."""
        argv = [B.PYTHON, os.path.join(HERE, "tls_connect.py"), "--port", str(port), "--procs",
                "1", "--seconds", str(seconds)] + (["--resume"] if self.args.tls_resume else [])
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           universal_newlines=True, timeout=seconds + 600)
        return json.loads(r.stdout.strip().splitlines()[-1])["connections"]

    def tls(self):
        kinds = [k for k in ("aap", "nginx") if k in self.bench.kinds]
        summary = self.callgrind_run(
            kinds, lambda port: self.tls_connections(port, 2),
            lambda port: self.tls_connections(port, self.args.tls_seconds), tag="-tls", tls=True,
            pool=64)
        print("callgrind: instructions per new TLS connection with one request (%s handshakes, "
              "tls_connect.py --procs 1, 1 worker)" % ("resumed" if self.args.tls_resume
                                                       else "full"))
        self.print_by_object(summary)

    def annotate(self, kind, dump, ok, tag=""):
        """Writes callgrind_annotate's self and inclusive listings; prints the top of both for
        apple-auth-proxy; returns {"per_request": Ir/request, "by_object": {obj: Ir/request}}
        (per connection for the tls mode)."""
        total = None
        by_object = {}
        for inclusive in ("no", "yes"):
            r = subprocess.run(["callgrind_annotate", "--inclusive=" + inclusive,
                                "--threshold=99.5", dump], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, universal_newlines=True)
            text = r.stdout
            with open(os.path.join(self.out, "callgrind-%s%s-%s.txt" % (
                    kind, tag, "inclusive" if inclusive == "yes" else "self")), "w") as f:
                f.write(text)
            m = re.search(r"^([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", text, re.M)
            if m:
                total = int(m.group(1).replace(",", ""))
            lines = []
            for l in text.splitlines():
                m = re.match(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S+?):(\S+)(?: \[(.*)\])?$", l)
                if not m or "PROGRAM TOTALS" in l:
                    continue
                lines.append(l)
                if inclusive == "no":
                    obj = os.path.basename(m.group(4) or "?")
                    if obj == os.path.basename(self.setup.binary):
                        obj = "%s (%s)" % (obj, "llhttp" if m.group(2) == "???" else
                                           m.group(2).split("/")[0])
                    by_object[obj] = by_object.get(obj, 0) + \
                        int(m.group(1).replace(",", "")) / ok
            if kind == "aap":
                print("callgrind, apple-auth-proxy, %s cost, top functions (%d requests%s)" % (
                    "inclusive" if inclusive == "yes" else "self", ok,
                    ", %.0f instructions per request" % (total / ok) if total and ok else ""))
                for l in lines[:40]:
                    print("  " + l.strip()[:150])
                print()
        return {"per_request": total / ok if total and ok else 0, "by_object": by_object}

    # -- perf -----------------------------------------------------------------------------------
    def perf(self):
        self.bench.start_all(1)
        split = {}
        for k in self.bench.kinds:
            p = self.bench.proxies[k]
            path = os.path.join(self.out, "perf-%s.data" % k)
            self.bench.wrk(k, "/v1/apps", 50, 1)
            pids = p.pids()[1:] if k == "nginx" else p.pids()[:1]
            rec = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "4000", "-g",
                                    "-o", path, "-p", ",".join(str(x) for x in pids)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            d = self.bench.wrk(k, "/v1/apps", 50, self.args.seconds)
            rec.send_signal(signal.SIGINT)
            rec.wait(60)
            by_dso = {}
            r = subprocess.run(["perf", "report", "-i", path, "--no-children", "--stdio",
                                "--sort", "dso", "-g", "none"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, universal_newlines=True)
            for l in r.stdout.splitlines():
                m = re.match(r"^\s*([\d.]+)%\s+(\S+)", l)
                if m:
                    by_dso[m.group(2)] = float(m.group(1))
            split[k] = {"rps": d["rps"], "cpu_us": d["proxy_cpu_us_per_req"], "dso": by_dso}
            r = subprocess.run(["perf", "report", "-i", path, "--no-children", "--stdio",
                                "--sort", "dso,symbol", "-g", "none", "--percent-limit", "0.5"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               universal_newlines=True)
            with open(os.path.join(self.out, "perf-report-%s.txt" % k), "w") as f:
                f.write(r.stdout)
            if k == "aap":
                print("perf (cpu-clock), apple-auth-proxy, wrk 50 connections, %.0f req/s: "
                      "self time by symbol" % d["rps"])
                for l in r.stdout.splitlines():
                    if l.strip() and not l.startswith("#"):
                        print("  " + re.sub(r"\s+-\s+-\s*$", "", l.strip())[:120])
                print()
        self.bench.stop_all()
        print("perf (cpu-clock): where each proxy's CPU time goes, wrk 50 connections, 1 worker")
        head = "%-26s" % "" + "".join("%18s" % B.NAMES[k] for k in split)
        print(head)
        print("-" * len(head))
        print("%-26s" % "CPU per request, us" + "".join(
            "%18.1f" % (split[k]["cpu_us"] or 0) for k in split))
        kern = {k: split[k]["dso"].get("[kernel.kallsyms]", 0.0) for k in split}
        print("%-26s" % "kernel, %" + "".join("%18.1f" % kern[k] for k in split))
        print("%-26s" % "kernel, us per request" + "".join(
            "%18.1f" % ((split[k]["cpu_us"] or 0) * kern[k] / 100) for k in split))
        print("%-26s" % "user space, us per request" + "".join(
            "%18.1f" % ((split[k]["cpu_us"] or 0) * (100 - kern[k]) / 100) for k in split))
        dsos = sorted({o for v in split.values() for o in v["dso"]},
                      key=lambda o: -max(v["dso"].get(o, 0) for v in split.values()))
        for o in dsos:
            if o == "[kernel.kallsyms]" or max(v["dso"].get(o, 0) for v in split.values()) < 0.5:
                continue
            print("%-26s" % (o[:22] + ", %") + "".join(
                "%18.1f" % split[k]["dso"].get(o, 0) for k in split))
        print()


def apns_callgrind(args):
    """The apns mode: see the module's docstring. Prints instructions per push."""
    import apns_bench as AB
    tmp = tempfile.mkdtemp(prefix="aap-profile-apns-")
    dump = os.path.join(args.out, "callgrind.out.apns")
    b = AB.Bench(args.binary, tmp, B.log)
    spawn = b.spawn

    def under_callgrind(name, argv):
        if name == "aap":
            argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + dump,
                    "--instr-atstart=no"] + argv
        return spawn(name, argv)

    b.spawn = under_callgrind
    try:
        b.start_upstream()
        b.start_aap("aap", False)
        lua = os.path.join(tmp, "post.lua")
        with open(lua, "w") as f:
            f.write(AB.LUA)
        b.wrk("aap", 2, 20, lua)  # connections, token, allocator: not counted
        pid = str(b.procs["aap"].pid)  # valgrind runs the proxy in its own process
        subprocess.run(["callgrind_control", "-i", "on", pid], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True)
        pushes = b.wrk("aap", int(args.apns_seconds), 20, lua)["pushes"]
        subprocess.run(["callgrind_control", "-i", "off", pid], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True)
    finally:
        b.stop()  # the dump is written at exit
        shutil.rmtree(tmp, ignore_errors=True)
    text = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=99.5", dump],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True).stdout
    with open(os.path.join(args.out, "callgrind-apns-self.txt"), "w") as f:
        f.write(text)
    m = re.search(r"^([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", text, re.M)
    total = int(m.group(1).replace(",", "")) if m else 0
    print("callgrind, apple-auth-proxy, APNs pushes (wrk -c20, %d pushes): %.0f instructions "
          "per push; top functions by self cost:" % (pushes, total / pushes if pushes else 0))
    for line in [l for l in text.splitlines() if re.match(r"^\s*[\d,]+ \(", l) and
                 "PROGRAM TOTALS" not in l][:30]:
        print("  " + line.strip()[:150])
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=os.path.join(B.ROOT, "build", "apple-auth-proxy"))
    ap.add_argument("--modes", default="strace,callgrind,perf")
    ap.add_argument("--requests", type=int, default=20000, help="requests for strace")
    ap.add_argument("--callgrind-requests", type=int, default=20000)
    ap.add_argument("--seconds", type=float, default=10.0, help="perf recording time")
    ap.add_argument("--tls-seconds", type=float, default=15.0,
                    help="tls: seconds of new connections under callgrind")
    ap.add_argument("--tls-resume", action="store_true",
                    help="tls: resumed handshakes instead of full ones")
    ap.add_argument("--apns-seconds", type=float, default=10.0,
                    help="apns: seconds of pushes under callgrind")
    ap.add_argument("--out")
    args = ap.parse_args()
    args.out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.binary)),
                                        "bench-profile")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        tool = {"strace": "strace", "callgrind": "valgrind", "perf": "perf", "tls": "valgrind",
                "apns": "valgrind"}[m]
        if not shutil.which(tool):
            sys.exit("profile: %s needs %s (apt-get install %s)" % (
                m, tool, {"perf": "linux-perf"}.get(m, tool)))
    os.makedirs(args.out, exist_ok=True)
    if "apns" in modes:
        apns_callgrind(args)
        modes.remove("apns")
    if modes:
        pr = Profiler(args)
        try:
            for m in modes:
                getattr(pr, m)()
        finally:
            pr.close()
    print("raw outputs in %s" % args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
