"""The deployment files: docker/k8s/*.yaml, docker/compose.yaml, docker/Dockerfile and the
systemd example are parsed and checked for what docs/deployment.md promises (probes, limits,
non-root, read-only root file system, the key as a secret, PDB and HPA aimed at the Deployment,
a NetworkPolicy that admits only labelled clients).

Needs Debian's python3-yaml. When the proxy binary is built (AAP_BINARY), the ConfigMap's
config.json is also run through `apple-auth-proxy check` with a key made here, so a
configuration change that the manifests miss fails this test.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

try:
    import yaml
except ImportError:  # pragma: no cover
    sys.stderr.write("test_k8s_manifests: python3-yaml is missing (apt-get install python3-yaml)\n")
    raise

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("AAP_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
K8S_DIR = os.path.join(SOURCE_DIR, "docker", "k8s")
COMPOSE = os.path.join(SOURCE_DIR, "docker", "compose.yaml")
DOCKERFILE = os.path.join(SOURCE_DIR, "docker", "Dockerfile")
SYSTEMD_UNIT = os.path.join(SOURCE_DIR, "docs", "examples", "systemd", "apple-auth-proxy.service")
BINARY = os.environ.get("AAP_BINARY") or os.path.join(SOURCE_DIR, "build", "apple-auth-proxy")

UID = 10001
PROXY_PORT = 8080
ADMIN_PORT = 9901
KEY_MOUNT = "/run/secrets/apple"
PLACEHOLDER = "REPLACE_WITH_YOUR_P8"


def load_k8s():
    """{file name: [documents]} for every docker/k8s/*.yaml."""
    out = {}
    for name in sorted(os.listdir(K8S_DIR)):
        if name.endswith((".yaml", ".yml")):
            with open(os.path.join(K8S_DIR, name)) as f:
                out[name] = [d for d in yaml.safe_load_all(f) if d is not None]
    return out


def cpu_millis(q):
    q = str(q)
    if q.endswith("m"):
        return float(q[:-1])
    return float(q) * 1000


MEM_UNITS = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "Ki": 1024, "Mi": 1024 ** 2, "Gi": 1024 ** 3, "Ti": 1024 ** 4}


def mem_bytes(q):
    m = re.fullmatch(r"([0-9.]+)([kMGT]i?|)", str(q))
    if not m:
        raise ValueError("memory quantity %r" % q)
    return float(m.group(1)) * MEM_UNITS[m.group(2)]


class K8sManifestsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.files = load_k8s()
        cls.objs = {}
        for name, docs in cls.files.items():
            for d in docs:
                cls.objs.setdefault(d.get("kind"), []).append((name, d))

    def one(self, kind):
        found = self.objs.get(kind, [])
        self.assertEqual(len(found), 1, "expected exactly one %s in docker/k8s, found %d" %
                         (kind, len(found)))
        return found[0][1]

    @property
    def deployment(self):
        return self.one("Deployment")

    @property
    def pod(self):
        return self.deployment["spec"]["template"]["spec"]

    @property
    def container(self):
        cs = self.pod["containers"]
        self.assertEqual(len(cs), 1, "one container in the pod")
        return cs[0]

    def resolve_port(self, port):
        """A probe's or Service's port (number or container port name) as a number."""
        if isinstance(port, int):
            return port
        for p in self.container.get("ports", []):
            if p.get("name") == port:
                return p["containerPort"]
        self.fail("port name %r is not a container port" % port)

    def pod_labels(self):
        return self.deployment["spec"]["template"]["metadata"]["labels"]

    def assertSelects(self, selector, what):
        labels = self.pod_labels()
        self.assertTrue(selector, "%s has an empty selector" % what)
        for k, v in selector.items():
            self.assertEqual(labels.get(k), v, "%s selects %s=%s, which the pods lack" % (what, k, v))

    # -- every file -----------------------------------------------------------------------------

    def test_expected_files(self):
        for name in ("deployment.yaml", "service.yaml", "secret.example.yaml", "configmap.yaml",
                     "pdb.yaml", "hpa.yaml", "networkpolicy.yaml", "kustomization.yaml"):
            self.assertIn(name, self.files, "docker/k8s/%s is missing" % name)

    def test_every_document_is_an_object(self):
        for name, docs in self.files.items():
            self.assertTrue(docs, "%s is empty" % name)
            for d in docs:
                self.assertIsInstance(d, dict, name)
                self.assertIsInstance(d.get("apiVersion"), str, "%s: apiVersion" % name)
                self.assertIsInstance(d.get("kind"), str, "%s: kind" % name)
                if d["kind"] != "Kustomization":
                    self.assertTrue(d.get("metadata", {}).get("name"), "%s: metadata.name" % name)
                    self.assertNotIn("namespace", d["metadata"],
                                     "%s: leave the namespace to kubectl -n / kustomize" % name)

    def test_kustomization_lists_all_but_the_secret_example(self):
        k = self.one("Kustomization")
        want = sorted(n for n in self.files if n not in ("kustomization.yaml", "secret.example.yaml"))
        self.assertEqual(sorted(k.get("resources", [])), want)

    # -- Deployment -----------------------------------------------------------------------------

    def test_deployment_api_and_selector(self):
        d = self.deployment
        self.assertEqual(d["apiVersion"], "apps/v1")
        self.assertSelects(d["spec"]["selector"]["matchLabels"], "the Deployment")
        self.assertTrue(self.container.get("image"), "container image")

    def test_ports(self):
        ports = {p["containerPort"]: p for p in self.container["ports"]}
        self.assertIn(PROXY_PORT, ports)
        self.assertIn(ADMIN_PORT, ports)
        env = {e["name"]: e.get("value") for e in self.container.get("env", [])}
        self.assertEqual(env.get("APPLE_AUTH_PROXY_LISTEN"), "0.0.0.0:%d" % PROXY_PORT)
        self.assertEqual(env.get("APPLE_AUTH_PROXY_ADMIN_LISTEN"), "0.0.0.0:%d" % ADMIN_PORT)
        # Without "clients", a non-loopback listener needs the explicit opt-out.
        if not self.configmap_config().get("clients"):
            self.assertEqual(env.get("APPLE_AUTH_PROXY_ALLOW_ANONYMOUS_CLIENTS"), "true")

    def check_probe(self, probe, path, what):
        self.assertIsNotNone(probe, "%s is missing" % what)
        get = probe.get("httpGet")
        self.assertIsNotNone(get, "%s is not an httpGet probe" % what)
        self.assertEqual(get.get("path"), path, "%s path" % what)
        self.assertEqual(self.resolve_port(get.get("port")), ADMIN_PORT, "%s port" % what)
        self.assertIn(get.get("scheme", "HTTP"), ("HTTP",), "%s scheme" % what)

    def test_liveness_probe(self):
        self.check_probe(self.container.get("livenessProbe"), "/healthz", "livenessProbe")

    def test_readiness_probe(self):
        self.check_probe(self.container.get("readinessProbe"), "/readyz", "readinessProbe")

    def test_startup_probe_if_any(self):
        if "startupProbe" in self.container:
            self.check_probe(self.container["startupProbe"], "/healthz", "startupProbe")

    def test_resources(self):
        res = self.container.get("resources", {})
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                self.assertIn(r, res.get(kind, {}), "resources.%s.%s is missing" % (kind, r))
        self.assertLessEqual(cpu_millis(res["requests"]["cpu"]), cpu_millis(res["limits"]["cpu"]))
        self.assertLessEqual(mem_bytes(res["requests"]["memory"]), mem_bytes(res["limits"]["memory"]))

    def test_security_context(self):
        pod_sc = self.pod.get("securityContext", {})
        sc = self.container.get("securityContext", {})

        def eff(k):
            return sc.get(k, pod_sc.get(k))

        self.assertIs(eff("runAsNonRoot"), True, "runAsNonRoot")
        self.assertEqual(eff("runAsUser"), UID, "runAsUser")
        self.assertIs(sc.get("readOnlyRootFilesystem"), True, "readOnlyRootFilesystem")
        self.assertIs(sc.get("allowPrivilegeEscalation"), False, "allowPrivilegeEscalation")
        self.assertIn("ALL", sc.get("capabilities", {}).get("drop", []), "capabilities.drop ALL")
        self.assertFalse(sc.get("capabilities", {}).get("add"), "no capabilities added")
        self.assertFalse(sc.get("privileged", False), "privileged")
        for k in ("hostNetwork", "hostPID", "hostIPC"):
            self.assertFalse(self.pod.get(k, False), k)
        self.assertIs(self.pod.get("automountServiceAccountToken"), False,
                      "the proxy needs no Kubernetes API token")

    def volume_for_mount(self, path):
        mounts = [m for m in self.container.get("volumeMounts", []) if m["mountPath"] == path]
        self.assertEqual(len(mounts), 1, "one volume mounted at %s" % path)
        m = mounts[0]
        vols = [v for v in self.pod.get("volumes", []) if v["name"] == m["name"]]
        self.assertEqual(len(vols), 1, "volume %s" % m["name"])
        return m, vols[0]

    def test_key_from_secret_volume(self):
        m, v = self.volume_for_mount(KEY_MOUNT)
        self.assertIs(m.get("readOnly"), True, "the key mount is read-only")
        self.assertIn("secret", v, "%s is a Secret volume" % KEY_MOUNT)
        secret = self.one("Secret")
        self.assertEqual(v["secret"]["secretName"], secret["metadata"]["name"])
        # The files are root-owned; the pod's user reads them through fsGroup and a group bit,
        # and nobody else may.
        mode = v["secret"].get("defaultMode", 0o644)
        self.assertEqual(mode & 0o007, 0, "the key is not world-readable (defaultMode %o)" % mode)
        if mode & 0o400 and not mode & 0o040:
            self.assertEqual(self.pod.get("securityContext", {}).get("runAsUser"), 0,
                             "mode %o is readable by root only" % mode)
        self.assertEqual(self.pod.get("securityContext", {}).get("fsGroup"), UID,
                         "fsGroup lets uid %d read the Secret" % UID)

    def test_config_from_configmap(self):
        env = {e["name"]: e.get("value") for e in self.container.get("env", [])}
        path = env.get("APPLE_AUTH_PROXY_CONFIG")
        self.assertTrue(path, "APPLE_AUTH_PROXY_CONFIG is set")
        m, v = self.volume_for_mount(os.path.dirname(path))
        self.assertIs(m.get("readOnly"), True)
        self.assertIn("configMap", v)
        cm = self.one("ConfigMap")
        self.assertEqual(v["configMap"]["name"], cm["metadata"]["name"])
        self.assertIn(os.path.basename(path), cm["data"])

    def configmap_config(self):
        cm = self.one("ConfigMap")
        return json.loads(cm["data"]["config.json"])

    def test_configmap_config_uses_the_secret(self):
        cfg = self.configmap_config()
        secret = self.one("Secret")
        keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
        self.assertTrue(cfg.get("credentials"), "the ConfigMap's config has credentials")
        for name, cred in cfg["credentials"].items():
            f = cred.get("private_key_file")
            self.assertTrue(f, "credential %s reads its key from a file" % name)
            self.assertEqual(os.path.dirname(f), KEY_MOUNT, "credential %s key path" % name)
            self.assertIn(os.path.basename(f), keys, "credential %s: no such key in the Secret" % name)
        self.assertEqual(cfg.get("admin_listen"), "0.0.0.0:%d" % ADMIN_PORT)
        self.assertEqual(cfg.get("listen"), ["0.0.0.0:%d" % PROXY_PORT])

    def test_configmap_config_passes_check(self):
        self.check_config(self.configmap_config())

    def check_config(self, cfg, extra_env=None):
        """Runs `apple-auth-proxy check` on cfg with keys made here and the pod's environment."""
        if not os.path.exists(BINARY):
            self.skipTest("no binary at %s" % BINARY)
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        d = tempfile.mkdtemp(prefix="aap-k8s-")
        try:
            os.chmod(d, 0o700)
            for cred in cfg["credentials"].values():
                pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption())
                path = os.path.join(d, os.path.basename(cred["private_key_file"]))
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(pem)
                cred["private_key_file"] = path
            cpath = os.path.join(d, "config.json")
            with open(cpath, "w") as f:
                json.dump(cfg, f)
            # The pod's environment, as the Deployment sets it (the config path aside).
            env = {e["name"]: e["value"] for e in self.container.get("env", [])
                   if "value" in e and e["name"] != "APPLE_AUTH_PROXY_CONFIG"}
            env.update({"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": d})
            env.update(extra_env or {})
            p = subprocess.run([BINARY, "check", "--config", cpath], env=env, timeout=30,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.assertEqual(p.returncode, 0, "apple-auth-proxy check on the ConfigMap's "
                             "config.json:\n%s%s" % (p.stdout, p.stderr))
        finally:
            shutil.rmtree(d, ignore_errors=True)

    # -- Secret example ---------------------------------------------------------------------------

    def test_secret_example_is_a_placeholder(self):
        secret = self.one("Secret")
        self.assertEqual(secret["apiVersion"], "v1")
        self.assertIn("AuthKey.p8", secret.get("stringData", {}))
        value = secret["stringData"]["AuthKey.p8"]
        self.assertIn(PLACEHOLDER, value)
        with open(os.path.join(K8S_DIR, "secret.example.yaml")) as f:
            text = f.read()
        self.assertNotRegex(text, r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
                            "secret.example.yaml must not hold a real key")
        self.assertNotIn("data", secret, "no base64 data in the example")

    # -- Service, PDB, HPA ----------------------------------------------------------------------

    def test_service(self):
        svc = self.one("Service")
        self.assertEqual(svc["apiVersion"], "v1")
        self.assertSelects(svc["spec"]["selector"], "the Service")
        ports = svc["spec"]["ports"]
        self.assertTrue(any(p["port"] == PROXY_PORT and
                            self.resolve_port(p.get("targetPort", p["port"])) == PROXY_PORT
                            for p in ports), "the Service forwards %d to the proxy" % PROXY_PORT)
        self.assertFalse(any(self.resolve_port(p.get("targetPort", p["port"])) == ADMIN_PORT
                             for p in ports), "the admin port stays off the Service")
        self.assertIn(svc["spec"].get("type", "ClusterIP"), ("ClusterIP",),
                      "the proxy is not exposed outside the cluster by default")

    def test_pdb_targets_the_deployment(self):
        pdb = self.one("PodDisruptionBudget")
        self.assertEqual(pdb["apiVersion"], "policy/v1")
        self.assertSelects(pdb["spec"]["selector"]["matchLabels"], "the PodDisruptionBudget")
        self.assertTrue("minAvailable" in pdb["spec"] or "maxUnavailable" in pdb["spec"])

    def test_hpa_targets_the_deployment(self):
        hpa = self.one("HorizontalPodAutoscaler")
        self.assertEqual(hpa["apiVersion"], "autoscaling/v2")
        ref = hpa["spec"]["scaleTargetRef"]
        self.assertEqual(ref["kind"], "Deployment")
        self.assertEqual(ref["apiVersion"], "apps/v1")
        self.assertEqual(ref["name"], self.deployment["metadata"]["name"])
        cpu = [m for m in hpa["spec"]["metrics"]
               if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
        self.assertEqual(len(cpu), 1, "one CPU metric")
        self.assertEqual(cpu[0]["resource"]["target"]["type"], "Utilization")
        self.assertGreater(cpu[0]["resource"]["target"]["averageUtilization"], 0)
        self.assertIn("cpu", self.container["resources"]["requests"],
                      "CPU utilization needs a CPU request")
        lo, hi = hpa["spec"].get("minReplicas", 1), hpa["spec"]["maxReplicas"]
        self.assertLessEqual(lo, hi)
        pdb = self.one("PodDisruptionBudget")
        if isinstance(pdb["spec"].get("minAvailable"), int):
            self.assertGreater(lo, pdb["spec"]["minAvailable"],
                               "with minReplicas <= minAvailable no node could ever be drained")


    # -- the optional Redis (docker/k8s/redis/) -------------------------------------------------

    def redis_docs(self):
        out = {}
        rdir = os.path.join(K8S_DIR, "redis")
        for name in sorted(os.listdir(rdir)):
            with open(os.path.join(rdir, name)) as f:
                for d in yaml.safe_load_all(f):
                    if d is not None:
                        out.setdefault(d["kind"], []).append((name, d))
        return out

    def test_redis_overlay_adds_redis_to_the_base(self):
        docs = self.redis_docs()
        k = docs["Kustomization"][0][1]
        self.assertEqual(sorted(k["resources"]), ["../", "redis.yaml"])
        self.assertEqual(sorted(p["path"] for p in k["patches"]),
                         ["configmap.yaml", "deployment.yaml"])
        ss = [d for n, d in docs["StatefulSet"] if n == "redis.yaml"]
        self.assertEqual(len(ss), 1)
        pod = ss[0]["spec"]["template"]["spec"]
        self.assertIs(pod["securityContext"]["runAsNonRoot"], True)
        self.assertIs(pod["automountServiceAccountToken"], False)
        c = pod["containers"][0]
        cmd = " ".join(c["command"])
        for flag in ("--save ''", "--appendonly no", "--requirepass"):
            self.assertIn(flag, cmd, "Redis runs without persistence and with a password")
        env = {e["name"]: e for e in c["env"]}
        self.assertEqual(env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"],
                         "apple-auth-proxy-redis")
        labels = ss[0]["spec"]["template"]["metadata"]["labels"]
        svc = [d for n, d in docs["Service"] if n == "redis.yaml"][0]
        for key, val in svc["spec"]["selector"].items():
            self.assertEqual(labels.get(key), val)
        self.assertEqual(svc["spec"]["ports"][0]["port"], 6379)
        # only the proxy's pods reach Redis, and the proxy's own policy lets them
        np = [d for n, d in docs["NetworkPolicy"] if n == "redis.yaml"][0]
        self.assertEqual(np["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"],
                         {"app.kubernetes.io/name": self.pod_labels()["app.kubernetes.io/name"]})
        egress = self.one("NetworkPolicy")["spec"]["egress"]
        self.assertTrue(any(r.get("to", [{}])[0].get("podSelector", {}).get("matchLabels") ==
                            labels and r["ports"][0]["port"] == 6379 for r in egress),
                        "the proxy's NetworkPolicy lets it reach Redis")

    def redis_overlay_config(self):
        cm = self.redis_docs()["ConfigMap"][0][1]
        self.assertEqual(cm["metadata"]["name"], self.one("ConfigMap")["metadata"]["name"])
        return json.loads(cm["data"]["config.json"])

    def test_redis_overlay_config_is_the_base_with_shared_state(self):
        cfg = self.redis_overlay_config()
        shared = cfg.pop("shared_state")
        self.assertEqual(cfg, self.configmap_config(), "only shared_state differs from the base")
        svc = [d for n, d in self.redis_docs()["Service"] if n == "redis.yaml"][0]
        self.assertEqual(shared["redis"], "%s:%d" % (svc["metadata"]["name"],
                                                     svc["spec"]["ports"][0]["port"]))
        hpa = self.one("HorizontalPodAutoscaler")
        self.assertEqual(shared["replicas"], hpa["spec"].get("minReplicas", 1),
                         "the replica count is the autoscaler's minimum")
        self.assertEqual(shared["replicas"], self.deployment["spec"]["replicas"])
        dep = self.redis_docs()["Deployment"][0][1]
        env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
        ref = env[shared["password_env"]]["valueFrom"]["secretKeyRef"]
        self.assertEqual(ref["name"], "apple-auth-proxy-redis")

    def test_redis_overlay_config_passes_check(self):
        cfg = self.redis_overlay_config()
        self.check_config(cfg, {cfg["shared_state"]["password_env"]: "not-a-real-password"})

    def test_networkpolicy(self):
        np = self.one("NetworkPolicy")
        self.assertEqual(np["apiVersion"], "networking.k8s.io/v1")
        spec = np["spec"]
        self.assertSelects(spec["podSelector"]["matchLabels"], "the NetworkPolicy")
        self.assertIn("Ingress", spec.get("policyTypes", []))
        self.assertIn("Egress", spec.get("policyTypes", []))
        for rule in spec.get("ingress", []):
            self.assertTrue(rule.get("from"), "an ingress rule without 'from' admits everyone")
            for peer in rule["from"]:
                self.assertNotIn("ipBlock", peer, "admit pods, not address ranges")
                sel = peer.get("podSelector", {}).get("matchLabels") or \
                    peer.get("namespaceSelector", {}).get("matchLabels")
                self.assertTrue(sel, "an empty selector admits every pod")
        proxy_rules = [r for r in spec.get("ingress", [])
                       if any(self.resolve_port(p["port"]) == PROXY_PORT for p in r.get("ports", []))]
        self.assertTrue(proxy_rules, "some clients may reach port %d" % PROXY_PORT)
        egress_ports = {(p.get("port"), p.get("protocol", "TCP"))
                        for r in spec.get("egress", []) for p in r.get("ports", [])}
        for want in ((443, "TCP"), (53, "UDP"), (53, "TCP")):
            self.assertIn(want, egress_ports, "egress %s/%s" % want)


class ComposeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(COMPOSE) as f:
            cls.doc = yaml.safe_load(f)
        cls.svc = cls.doc["services"]["apple-auth-proxy"]

    def test_ports_on_loopback_only(self):
        ports = self.svc.get("ports", [])
        self.assertTrue(ports)
        for p in ports:
            self.assertIsInstance(p, str, "short syntax HOST_IP:HOST_PORT:CONTAINER_PORT")
            self.assertTrue(p.startswith("127.0.0.1:"), "port %r is published beyond loopback" % p)
        self.assertIn("127.0.0.1:8080:8080", ports)

    def test_hardening(self):
        self.assertIs(self.svc.get("read_only"), True)
        user = str(self.svc.get("user", ""))
        self.assertTrue(user and user.split(":")[0] not in ("0", "root"), "non-root user")
        self.assertEqual(user.split(":")[0], str(UID))
        self.assertIn("ALL", self.svc.get("cap_drop", []))
        self.assertIn(self.svc.get("restart"), ("always", "unless-stopped", "on-failure"))

    def test_key_as_secret(self):
        env = self.svc["environment"]
        path = env["APP_STORE_CONNECT_API_KEY_KEY_FILEPATH"]
        self.assertTrue(path.startswith("/run/secrets/"))
        targets = []
        for s in self.svc["secrets"]:
            src = s["source"] if isinstance(s, dict) else s
            tgt = s.get("target", src) if isinstance(s, dict) else s
            self.assertIn(src, self.doc.get("secrets", {}), "secret %s is declared" % src)
            targets.append("/run/secrets/" + tgt if not tgt.startswith("/") else tgt)
        self.assertIn(path, targets)

    def test_healthcheck(self):
        hc = self.svc.get("healthcheck", {})
        # The image has no shell: the check is the binary's own `health` command, exec form.
        self.assertEqual(hc.get("test"), ["CMD", "apple-auth-proxy", "health"])


class DockerfileTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(DOCKERFILE) as f:
            text = f.read()
        cls.text = re.sub(r"\\\n", " ", text)
        cls.lines = [ln.strip() for ln in cls.text.splitlines()
                     if ln.strip() and not ln.strip().startswith("#")]

    def last(self, instr):
        found = [ln for ln in self.lines if ln.split(None, 1)[0].upper() == instr]
        self.assertTrue(found, "no %s in the Dockerfile" % instr)
        return found[-1].split(None, 1)[1] if len(found[-1].split(None, 1)) > 1 else ""

    def test_runtime_stage(self):
        self.assertEqual(self.last("USER"), "%d:%d" % (UID, UID))
        self.assertEqual(json.loads(self.last("ENTRYPOINT")), ["apple-auth-proxy"])
        self.assertEqual(json.loads(self.last("CMD")), ["serve"])
        self.assertIn("APPLE_AUTH_PROXY_LISTEN=0.0.0.0:8080", self.text)
        self.assertIn("APPLE_AUTH_PROXY_ADMIN_LISTEN=0.0.0.0:9901", self.text)
        self.assertIn("APPLE_AUTH_PROXY_ALLOW_ANONYMOUS_CLIENTS=true", self.text)
        self.assertEqual(set(self.last("EXPOSE").split()), {"8080", "9901"})
        self.assertIn('CMD ["apple-auth-proxy", "health"]', self.last("HEALTHCHECK"))

    def test_build_image_is_an_argument_and_runtime_is_empty(self):
        self.assertRegex(self.text, r"ARG BUILD_IMAGE=debian:bookworm\b")
        froms = [ln.split()[1] for ln in self.lines if ln.upper().startswith("FROM ")]
        self.assertEqual(froms, ["${BUILD_IMAGE}", "scratch"])

    def test_runtime_stage_needs_no_shell(self):
        # After FROM scratch there is no /bin/sh: every RUN, CMD, ENTRYPOINT and HEALTHCHECK
        # must be in exec (JSON array) form, and the files come from the build stage alone.
        start = max(i for i, ln in enumerate(self.lines) if ln.upper().startswith("FROM "))
        for ln in self.lines[start + 1:]:
            instr, _, rest = ln.partition(" ")
            instr = instr.upper()
            if instr in ("RUN", "CMD", "ENTRYPOINT"):
                self.assertTrue(rest.strip().startswith("["), "shell form: %s" % ln)
            elif instr == "HEALTHCHECK":
                self.assertRegex(rest, r"\bCMD \[", "shell form: %s" % ln)
            elif instr in ("COPY", "ADD"):
                self.assertIn("--from=build", rest, "runtime files come from the build stage: %s" % ln)

    def test_dockerignore(self):
        with open(os.path.join(SOURCE_DIR, ".dockerignore")) as f:
            pats = {ln.strip() for ln in f if ln.strip() and not ln.startswith("#")}
        for p in (".git", ".deps", "build", "build-*"):
            self.assertIn(p, pats)


class SystemdUnitTest(unittest.TestCase):
    def test_hardening_directives(self):
        with open(SYSTEMD_UNIT) as f:
            text = f.read()
        sets = {}
        for ln in text.splitlines():
            ln = ln.strip()
            if ln and not ln.startswith(("#", ";", "[")) and "=" in ln:
                k, v = ln.split("=", 1)
                sets.setdefault(k.strip(), []).append(v.strip())
        for k, v in (("DynamicUser", "yes"), ("ProtectSystem", "strict"),
                     ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"), ("ProtectHome", "yes")):
            self.assertIn(v, sets.get(k, []), "%s=%s" % (k, v))
        self.assertIn("apple.p8:/etc/apple-auth-proxy/AuthKey.p8", sets.get("LoadCredential", []))
        # %d is systemd's specifier for ${CREDENTIALS_DIRECTORY} (Environment= does not expand
        # variables; ExecStart= does).
        self.assertTrue(any(re.search(r"KEY_FILEPATH=(%d|\$\{CREDENTIALS_DIRECTORY\})/apple\.p8$", v)
                            for v in sets.get("Environment", []) + sets.get("ExecStart", [])),
                        "the key path comes from the credentials directory")
        self.assertTrue(sets.get("RestrictAddressFamilies"))
        self.assertTrue(any(v.split()[0].endswith("apple-auth-proxy")
                            for v in sets.get("ExecStart", [])))


if __name__ == "__main__":
    unittest.main()
