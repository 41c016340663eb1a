//! The Kubernetes manifests in `deploy/`: every file parses, every object is well-formed,
//! and the fields that make the fleet work (and keep it safe) say what docs/fleet.md says.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// Every object of every manifest, with the file it came from.
fn objects() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("deploy/ exists")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    for f in files {
        let text = std::fs::read_to_string(&f).expect("readable");
        let name = f
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v: serde_norway::Value =
                serde_norway::Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            if v.is_null() {
                continue;
            }
            let json = serde_json::to_value(v).unwrap_or_else(|e| panic!("{name}: {e}"));
            out.push((name.clone(), json));
        }
    }
    out
}

fn find<'a>(all: &'a [(String, Value)], kind: &str, ns: &str, name: &str) -> &'a Value {
    all.iter()
        .map(|(_, v)| v)
        .find(|v| {
            v["kind"] == kind
                && v["metadata"]["name"] == name
                && v["metadata"]["namespace"].as_str().unwrap_or("") == ns
        })
        .unwrap_or_else(|| panic!("no {kind} {ns}/{name}"))
}

fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer}"))
}

fn strings(v: &Value, pointer: &str) -> Vec<String> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

const CLUSTER_SCOPED: &[&str] = &["Namespace", "ClusterRole", "ClusterRoleBinding"];

#[test]
fn every_object_is_well_formed() {
    let all = objects();
    for (file, v) in &all {
        if v["kind"] == "Kustomization" {
            continue;
        }
        let kind = v["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: no kind"));
        assert!(
            v["apiVersion"].is_string(),
            "{file}: {kind} without apiVersion"
        );
        assert!(
            v["metadata"]["name"].is_string(),
            "{file}: {kind} without a name"
        );
        if !CLUSTER_SCOPED.contains(&kind) {
            let ns = s(v, "/metadata/namespace");
            assert!(ns == "cod" || ns == "cod-workers", "{file}: {kind} in {ns}");
        }
        // Workloads: selectors match their pods, containers have images and resources.
        if let Some(template) = v.pointer("/spec/template") {
            let labels = &template["metadata"]["labels"];
            for (k, want) in v["spec"]["selector"]["matchLabels"]
                .as_object()
                .expect("matchLabels")
            {
                assert_eq!(&labels[k], want, "{file}: selector {k}");
            }
            for c in template["spec"]["containers"]
                .as_array()
                .expect("containers")
            {
                assert!(c["image"].is_string(), "{file}: container without image");
                assert!(
                    c["resources"]["requests"].is_object(),
                    "{file}: no requests"
                );
                assert!(
                    c["resources"]["limits"]["memory"].is_string(),
                    "{file}: no memory limit"
                );
            }
        }
    }
}

#[test]
fn services_select_pods_that_exist() {
    let all = objects();
    let pods: Vec<(&str, &Value)> = all
        .iter()
        .filter_map(|(_, v)| {
            v.pointer("/spec/template/metadata/labels")
                .map(|l| (v["metadata"]["namespace"].as_str().unwrap_or(""), l))
        })
        .collect();
    let services: Vec<&Value> = all
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v["kind"] == "Service")
        .collect();
    assert!(services.len() >= 4);
    for svc in services {
        let ns = s(svc, "/metadata/namespace");
        let sel = svc["spec"]["selector"].as_object().expect("a selector");
        assert!(
            pods.iter()
                .any(|(pns, labels)| *pns == ns && sel.iter().all(|(k, v)| &labels[k] == v)),
            "service {} selects nothing",
            svc["metadata"]["name"]
        );
    }
}

#[test]
fn kustomization_lists_every_manifest() {
    let text = std::fs::read_to_string(deploy_dir().join("kustomization.yaml")).expect("exists");
    let k: Value =
        serde_json::to_value(serde_norway::from_str::<serde_norway::Value>(&text).expect("parses"))
            .expect("json");
    let mut listed = strings(&k, "/resources");
    listed.sort();
    let mut files: Vec<String> = std::fs::read_dir(deploy_dir())
        .expect("exists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    files.sort();
    assert_eq!(listed, files);
}

#[test]
fn nats_runs_jetstream_on_persistent_volumes() {
    let all = objects();
    let sts = find(&all, "StatefulSet", "cod", "nats");
    let headless = find(&all, "Service", "cod", s(sts, "/spec/serviceName"));
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(sts["spec"]["replicas"], 3);
    let c = &sts["spec"]["template"]["spec"]["containers"][0];
    assert!(strings(c, "/args").contains(&"-js".to_owned()));
    assert_eq!(s(sts, "/spec/volumeClaimTemplates/0/metadata/name"), "data");
    assert!(
        c["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .any(|m| m["name"] == "data" && m["mountPath"] == "/data")
    );
    let conf = s(
        find(&all, "ConfigMap", "cod", "nats-config"),
        "/data/nats.conf",
    );
    assert!(
        conf.contains("jetstream") && conf.contains("store_dir: /data/jetstream"),
        "{conf}"
    );
    for i in 0..3 {
        assert!(
            conf.contains(&format!("nats-{i}.nats-cluster.cod.svc:6222")),
            "route {i}"
        );
    }
    assert!(
        conf.contains("pid_file: /data/nats.pid"),
        "the preStop lame-duck signal needs it"
    );
    let client = find(&all, "Service", "cod", "nats");
    assert_eq!(client["spec"]["ports"][0]["port"], 4222);
}

#[test]
fn gateways_serve_through_nats_without_privileges() {
    let all = objects();
    let d = find(&all, "Deployment", "cod", "cod-gateway");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    let args = strings(c, "/args");
    assert_eq!(args[0], "serve");
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--nats" && w[1] == "nats://nats.cod.svc:4222")
    );
    assert!(!args.iter().any(|a| a == "--local-worker"));
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(strings(sc, "/capabilities/drop"), ["ALL"]);
    assert_ne!(sc["privileged"], true);
    // Ready only while it reaches NATS; alive regardless (a restart would not bring NATS
    // back).
    assert_eq!(s(c, "/readinessProbe/httpGet/path"), "/readyz");
    assert_eq!(s(c, "/livenessProbe/httpGet/path"), "/healthz");
    let svc = find(&all, "Service", "cod", "cod-gateway");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
}

#[test]
fn workers_have_the_sandboxs_privileges_and_nothing_more() {
    let all = objects();
    let ns = find(&all, "Namespace", "", "cod-workers");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    let cod_ns = find(&all, "Namespace", "", "cod");
    assert_eq!(
        cod_ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "baseline"
    );
    let d = find(&all, "Deployment", "cod-workers", "cod-worker");
    assert!(
        d["spec"].get("replicas").is_none(),
        "the manager owns replicas"
    );
    let pod = &d["spec"]["template"]["spec"];
    for host in ["hostPID", "hostNetwork", "hostIPC"] {
        assert_ne!(pod[host], true, "{host}");
    }
    assert_eq!(pod["automountServiceAccountToken"], false);
    for v in pod["volumes"].as_array().expect("volumes") {
        assert!(v.get("hostPath").is_none(), "no host paths: {v}");
    }
    // Long enough to finish the longest run allowed (limits.max.wall_ms, 60 s) after SIGTERM.
    assert!(pod["terminationGracePeriodSeconds"].as_u64().expect("set") >= 60);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["privileged"], true);
    assert_eq!(c["securityContext"]["runAsUser"], 0);
    let script = strings(c, "/args").join("\n");
    assert!(
        script.contains("exec cod worker --nats nats://nats.cod.svc:4222"),
        "{script}"
    );
    assert!(script.contains("--slots 64"));
    assert!(!script.contains("$$"), "Kubernetes would reduce $$ to $");
    assert!(
        c["resources"]["limits"].get("cpu").is_none(),
        "no CPU limit: cod shares CPUs itself"
    );
    // Nothing reaches workers; they reach NATS and DNS only.
    let np = find(&all, "NetworkPolicy", "cod-workers", "cod-worker");
    assert_eq!(strings(np, "/spec/policyTypes"), ["Ingress", "Egress"]);
    assert_eq!(np["spec"]["ingress"], Value::Array(vec![]));
    let ports: Vec<u64> = np["spec"]["egress"]
        .as_array()
        .expect("egress")
        .iter()
        .flat_map(|e| {
            e["ports"]
                .as_array()
                .expect("ports")
                .iter()
                .map(|p| p["port"].as_u64().expect("a port"))
        })
        .collect();
    assert_eq!(ports, [4222, 53, 53]);
}

#[test]
fn the_manager_may_scale_the_worker_deployment_and_nothing_else() {
    let all = objects();
    let role = find(&all, "Role", "cod-workers", "cod-fleet");
    let mut rules: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in role["rules"].as_array().expect("rules") {
        assert_eq!(strings(r, "/apiGroups"), ["apps"]);
        assert_eq!(strings(r, "/resourceNames"), ["cod-worker"]);
        for res in strings(r, "/resources") {
            rules.insert(res, strings(r, "/verbs"));
        }
    }
    assert_eq!(rules["deployments"], ["get"]);
    assert_eq!(rules["deployments/scale"], ["get", "patch"]);
    assert_eq!(rules.len(), 2);
    let binding = find(&all, "RoleBinding", "cod-workers", "cod-fleet");
    assert_eq!(binding["roleRef"]["name"], "cod-fleet");
    assert_eq!(binding["subjects"][0]["name"], "cod-fleet");
    assert_eq!(binding["subjects"][0]["namespace"], "cod");
    let d = find(&all, "Deployment", "cod", "cod-fleet");
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "cod-fleet");
    let args = strings(&pod["containers"][0], "/args");
    let flag = |f: &str| {
        args.windows(2)
            .find(|w| w[0] == f)
            .map(|w| w[1].clone())
            .unwrap_or_else(|| panic!("no {f}"))
    };
    assert_eq!(args[0], "fleet");
    assert_eq!(flag("--provider"), "kubernetes");
    // It scales the Deployment that exists, where it exists.
    assert_eq!(flag("--namespace"), "cod-workers");
    assert_eq!(flag("--deployment"), "cod-worker");
    assert_eq!(flag("--nats"), "nats://nats.cod.svc:4222");
    assert_eq!(
        pod["containers"][0]["securityContext"]["runAsNonRoot"],
        true
    );
}
