#!/usr/bin/env python3
"""deploy-check: render every overlay, validate each object against the Kubernetes schemas
offline, and prove the manifests match what the binaries really read:

* every Deployment's environment (ConfigMap literals + container env + Secret keys with
  placeholder values) passes the real binary's `clm-<svc> check-config` (env cleared), which
  runs every check `serve` runs before it listens: an unknown or malformed key, incomplete auth
  (production needs issuer, audience and a key) or a weak secret makes it exit non-zero. The
  manifests' CLM_AUTH__JWKS_URL is fetched from a local stand-in serving a JWKS (no network);
  in the prod overlay it must be https;
* the gRPC port of the probes, the containerPort and the Service targetPort are the port in
  CLM_SERVER__LISTEN_ADDR;
* a service with hosted pages (its lib.rs calls `shared.add_pages`: lifecycle's unsubscribe page, feedback's survey page)
  has a `pages` containerPort and Service port on the port of CLM_PAGES__LISTEN_ADDR (default
  0.0.0.0:8080 in production), which a NetworkPolicy admits; a service without pages has none;
* each readiness probe asks for the gRPC service name the binary reports in health, and the
  startup and liveness probes ask for `liveness` (a busy or degraded pod is not a dead one);
* terminationGracePeriodSeconds exceeds CLM_SERVER__SHUTDOWN_GRACE_MS;
* every service sends its events over NATS, and lifecycle, feedback and metrics reach contacts at
  its Service (CLM_<SVC>__CONTACTS_URL: empty would mean "in this process", which it is not);
* NATS acknowledges only what it has fsynced: every NATS configuration shipped (deploy/nats/*.conf,
  and the one an overlay runs its NATS with) sets `sync_interval: always` in its jetstream block,
  and the prod overlay keeps its streams on three servers (CLM_EVENTS__STREAM_REPLICAS ≥ 3).

Run from the repository root: deploy/check.py <target-dir> (binaries in <target-dir>/debug).
"""
import http.server
import json
import os
import re
import subprocess
import sys
import threading

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERLAYS = ["dev", "prod"]
K8S_VERSION = "1.31.0"
SERVICES = ["contacts", "lifecycle", "feedback", "metrics"]


def fail(msg):
    print(f"deploy-check: FAIL: {msg}")
    sys.exit(1)


def grpc_name(service):
    src = open(os.path.join(ROOT, "crates", f"clm-{service}", "src", "lib.rs")).read()
    m = re.search(r'Ok\(vec!\["(clm\.[a-z]+\.v1\.[A-Za-z]+)"\]\)', src)
    if not m:
        fail(f"cannot find the health service name in crates/clm-{service}/src/lib.rs")
    return m.group(1)


def has_pages(service):
    """Whether the service adds hosted pages (`shared.add_pages(` in its lib.rs)."""
    src = open(os.path.join(ROOT, "crates", f"clm-{service}", "src", "lib.rs")).read()
    return "shared.add_pages(" in src


def pages_admitted(docs, labels, port):
    """Whether some NetworkPolicy selecting a pod with `labels` admits ingress on `port`."""
    for d in docs:
        if d["kind"] != "NetworkPolicy" or "Ingress" not in d["spec"].get("policyTypes", []):
            continue
        sel = d["spec"].get("podSelector", {})
        if any(labels.get(k) != v for k, v in sel.get("matchLabels", {}).items()):
            continue
        ok = True
        for e in sel.get("matchExpressions", []):
            if e["operator"] == "In" and labels.get(e["key"]) not in e["values"]:
                ok = False
        if ok and any(p.get("port") == port for rule in d["spec"].get("ingress", []) for p in rule.get("ports", [])):
            return True
    return False


# Long enough for every secret rule (auth.jwt_hs256_secret needs 32 bytes).
SECRET_PLACEHOLDER = "placeholder-secret-value-0123456789abcdef"

# A JWKS with the Ed25519 example public key of RFC 8037 (A.2): what the stand-in identity
# provider serves in place of the manifests' CLM_AUTH__JWKS_URL.
JWKS = json.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "deploy-check",
                             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}).encode()


def jwks_stand_in():
    """Serve JWKS on 127.0.0.1 from a thread; returns its URL."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(JWKS)))
            self.end_headers()
            self.wfile.write(JWKS)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"


SYNC_ALWAYS = re.compile(r"jetstream\s*\{[^}]*\bsync_interval\s*:\s*\"?always\"?", re.S)


def check_nats_conf(text, where):
    text = re.sub(r"(^|\s)(#|//).*$", "", text, flags=re.M)  # comments do not count
    if not SYNC_ALWAYS.search(text):
        fail(f"{where}: the jetstream block must set `sync_interval: always` (NATS otherwise acknowledges "
             "writes it fsyncs up to two minutes later; docs/operations.md § Retention)")


def check_nats_workload(docs, overlay):
    """The overlay's own NATS, if it runs one, reads a config file with sync_interval: always."""
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    for w in docs:
        if w["kind"] not in ("Deployment", "StatefulSet") or w["metadata"]["name"] != "nats":
            continue
        pod = w["spec"]["template"]["spec"]
        c = pod["containers"][0]
        args = c.get("args", []) + c.get("command", [])
        flags = [i for i, a in enumerate(args) if a in ("-c", "--config")]
        if not flags or flags[0] + 1 >= len(args):
            fail(f"overlay {overlay}: NATS must run with a config file (-c) that sets sync_interval: always")
        path = args[flags[0] + 1]
        directory, name = os.path.split(path)
        mounts = {m["mountPath"].rstrip("/"): m["name"] for m in c.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        volume = volumes.get(mounts.get(directory.rstrip("/"), ""), {})
        data = config_maps.get(volume.get("configMap", {}).get("name", ""), {})
        if name not in data:
            fail(f"overlay {overlay}: NATS config {path} does not come from a ConfigMap in the overlay")
        check_nats_conf(data[name], f"overlay {overlay}: NATS config {path}")


def check_contacts_url(env, svc, overlay, services):
    """Lifecycle, feedback and metrics ask contacts over gRPC: their CLM_<SVC>__CONTACTS_URL must
    name the clm-contacts Service on its port (empty means "contacts in this process", which a
    per-service binary is not: every call would fail)."""
    key = f"CLM_{svc.upper()}__CONTACTS_URL"
    url = env.get(key, "")
    m = re.fullmatch(r"https?://([^:/]+):(\d+)/?", url)
    if not m:
        fail(f"overlay {overlay}: clm-{svc} needs {key}=http://clm-contacts:<port> (got {url!r})")
    host, port = m.group(1), int(m.group(2))
    contacts = services.get("clm-contacts")
    if host.split(".")[0] != "clm-contacts" or not contacts or port not in [p["port"] for p in contacts["spec"]["ports"]]:
        fail(f"overlay {overlay}: {key}={url} is not the clm-contacts Service and one of its ports")


def placeholder(key, service):
    if key.endswith("__DATABASE_URL"):
        return f"postgres://clm:secret@db.example:5432/clm_{service}"
    if key.endswith("_PEM"):
        return ""
    return SECRET_PLACEHOLDER


def main():
    target = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target")
    validate = os.path.join(ROOT, ".tools", "venv", "bin", "kubernetes-validate")
    checked = 0
    jwks_url = jwks_stand_in()
    confs = sorted(f for f in os.listdir(os.path.join(ROOT, "deploy", "nats")) if f.endswith(".conf"))
    if not confs:
        fail("deploy/nats/ holds no NATS configuration")
    for f in confs:
        check_nats_conf(open(os.path.join(ROOT, "deploy", "nats", f)).read(), f"deploy/nats/{f}")
    for overlay in OVERLAYS:
        path = os.path.join(ROOT, "deploy", "k8s", "overlays", overlay)
        rendered = subprocess.run(["kubectl", "kustomize", path], check=True, capture_output=True, text=True).stdout
        out = os.path.join(ROOT, ".tools", f"rendered-{overlay}.yaml")
        with open(out, "w") as f:
            f.write(rendered)
        r = subprocess.run([validate, "--strict", "--quiet", "-k", K8S_VERSION, out], capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stdout[-4000:], r.stderr[-4000:])
            fail(f"overlay {overlay}: objects do not validate against Kubernetes {K8S_VERSION}")
        docs = [d for d in yaml.safe_load_all(rendered) if d]
        config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
        secrets = {d["metadata"]["name"]: d.get("data", {}) or d.get("stringData", {}) for d in docs if d["kind"] == "Secret"}
        services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
        check_nats_workload(docs, overlay)
        deployments = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].startswith("clm-")]
        if sorted(d["metadata"]["name"] for d in deployments) != sorted(f"clm-{s}" for s in SERVICES):
            fail(f"overlay {overlay}: expected a Deployment per service")
        for dep in deployments:
            svc = dep["metadata"]["name"].removeprefix("clm-")
            pod = dep["spec"]["template"]["spec"]
            c = pod["containers"][0]
            env = {}
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    env.update(config_maps[src["configMapRef"]["name"]])
                if "secretRef" in src:
                    name = src["secretRef"]["name"]
                    if name in secrets:
                        env.update({k: placeholder(k, svc) for k in secrets[name]})
                    elif name == f"clm-{svc}-db":
                        env[f"CLM_{svc.upper()}__DATABASE_URL"] = placeholder("__DATABASE_URL", svc)
                    elif name == "clm-auth":
                        env["CLM_AUTH__JWT_HS256_SECRET"] = SECRET_PLACEHOLDER
                        env["CLM_SERVER__PAGE_TOKEN_SECRET"] = SECRET_PLACEHOLDER
                        env["CLM_MESSAGING__LINK_SECRET"] = SECRET_PLACEHOLDER
            for e in c.get("env", []):
                env[e["name"]] = str(e.get("value", ""))
            if "CLM_AUTH__JWKS_URL" in env:
                if overlay == "prod" and not env["CLM_AUTH__JWKS_URL"].startswith("https://"):
                    fail(f"overlay {overlay}: CLM_AUTH__JWKS_URL must be https:// (keys fetched in the clear can be forged)")
                env["CLM_AUTH__JWKS_URL"] = jwks_url
            binary = os.path.join(target, "debug", f"clm-{svc}")
            if not os.path.exists(binary):
                fail(f"{binary} is missing: build the binaries first (cargo build --bins)")
            r = subprocess.run([binary, "check-config"], env={"PATH": os.environ.get("PATH", ""), "CLM_CONFIG_DIR": "/nonexistent", **env}, capture_output=True, text=True)
            if r.returncode != 0:
                fail(f"overlay {overlay}: clm-{svc} rejects its manifest configuration: {r.stderr.strip() or r.stdout.strip()}")
            port = int(env["CLM_SERVER__LISTEN_ADDR"].rsplit(":", 1)[1])
            if f"listen_addr=0.0.0.0:{port}" not in r.stdout:
                fail(f"overlay {overlay}: clm-{svc} would not listen on 0.0.0.0:{port}: {r.stdout.strip()}")
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            if ports.get("grpc") != port:
                fail(f"overlay {overlay}: clm-{svc} containerPort grpc != {port}")
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"]:
                if c[probe]["grpc"]["port"] != port:
                    fail(f"overlay {overlay}: clm-{svc} {probe} port != {port}")
            if c["readinessProbe"]["grpc"]["service"] != grpc_name(svc):
                fail(f"overlay {overlay}: clm-{svc} readiness probe asks for {c['readinessProbe']['grpc']['service']!r}, the binary reports {grpc_name(svc)!r}")
            for probe in ["startupProbe", "livenessProbe"]:
                if c[probe]["grpc"].get("service") != "liveness":
                    fail(f"overlay {overlay}: clm-{svc} {probe} must ask for 'liveness' (a busy or degraded pod is not a dead one), not {c[probe]['grpc'].get('service')!r}")
            svc_obj = services.get(f"clm-{svc}")
            if not svc_obj or svc_obj["spec"]["ports"][0]["targetPort"] not in ("grpc", port):
                fail(f"overlay {overlay}: Service clm-{svc} does not target the grpc port")
            pages_port = int(env.get("CLM_PAGES__LISTEN_ADDR", "0.0.0.0:8080").rsplit(":", 1)[1])
            svc_ports = {p["name"]: p for p in svc_obj["spec"]["ports"]}
            if has_pages(svc):
                if f"pages_addr=0.0.0.0:{pages_port}" not in r.stdout:
                    fail(f"overlay {overlay}: clm-{svc} would not serve its pages on 0.0.0.0:{pages_port}: {r.stdout.strip()}")
                if ports.get("pages") != pages_port:
                    fail(f"overlay {overlay}: clm-{svc} has hosted pages: containerPort pages must be {pages_port}")
                if "pages" not in svc_ports or svc_ports["pages"]["targetPort"] not in ("pages", pages_port):
                    fail(f"overlay {overlay}: Service clm-{svc} needs a port named pages targeting the pages port")
                labels = dep["spec"]["template"]["metadata"]["labels"]
                if not pages_admitted(docs, labels, pages_port):
                    fail(f"overlay {overlay}: no NetworkPolicy admits the hosted pages of clm-{svc} on {pages_port}")
            elif "pages" in ports or "pages" in svc_ports:
                fail(f"overlay {overlay}: clm-{svc} has no hosted pages, yet declares a pages port")
            grace_ms = int(env.get("CLM_SERVER__SHUTDOWN_GRACE_MS", "20000"))
            if pod["terminationGracePeriodSeconds"] * 1000 <= grace_ms:
                fail(f"overlay {overlay}: clm-{svc} terminationGracePeriodSeconds must exceed the drain time ({grace_ms} ms)")
            if not c["securityContext"].get("readOnlyRootFilesystem") or not pod["securityContext"].get("runAsNonRoot"):
                fail(f"overlay {overlay}: clm-{svc} must run non-root with a read-only root filesystem")
            if env.get("CLM_EVENTS__TRANSPORT") != "nats":
                fail(f"overlay {overlay}: clm-{svc} must send its events over NATS (CLM_EVENTS__TRANSPORT=nats): "
                     "the default durable log lives in one process's database and reaches no other service")
            if svc != "contacts":
                check_contacts_url(env, svc, overlay, services)
            if overlay == "prod" and int(env.get("CLM_EVENTS__STREAM_REPLICAS", "1")) < 3:
                fail(f"overlay {overlay}: clm-{svc} must keep its JetStream streams on three servers "
                     "(CLM_EVENTS__STREAM_REPLICAS=3): one server's crash must not lose acknowledged events")
            checked += 1
        print(f"deploy-check: overlay {overlay}: {len(docs)} objects valid; {len(deployments)} Deployments match their binaries")
    print(f"deploy-check: ok ({checked} deployments checked)")


if __name__ == "__main__":
    main()
