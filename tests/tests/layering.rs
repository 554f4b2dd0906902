//! The dependency rule of the workspace, read from each crate's manifest:
//! `dataplane` is the lowest layer and uses no hinan crate; `vpn` uses
//! `dataplane` only; `dns` and `sdn` use neither; no component crate uses
//! `orchestrator`.

use std::collections::BTreeSet;
use std::path::Path;

/// The hinan crates `krate` depends on (normal, dev and build dependencies).
fn hinan_deps(krate: &str) -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let manifest: toml::Table = toml::from_str(&text).unwrap();
    let own = manifest["package"]["name"].as_str().unwrap().to_owned();
    ["dependencies", "dev-dependencies", "build-dependencies"]
        .iter()
        .filter_map(|section| manifest.get(*section).and_then(|t| t.as_table()))
        .flat_map(|t| t.keys().cloned())
        .filter(|name| name.starts_with("hinan-") && *name != own)
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn component_crates_depend_only_downward() {
    assert_eq!(
        hinan_deps("dataplane"),
        set(&[]),
        "dataplane uses no hinan crate"
    );
    assert_eq!(
        hinan_deps("vpn"),
        set(&["hinan-dataplane"]),
        "vpn uses dataplane only"
    );
    assert_eq!(
        hinan_deps("dns"),
        set(&[]),
        "dns uses neither dataplane nor vpn"
    );
    assert_eq!(
        hinan_deps("sdn"),
        set(&[]),
        "sdn uses neither dataplane nor vpn"
    );
    for krate in ["dataplane", "vpn", "dns", "sdn"] {
        assert!(
            !hinan_deps(krate).contains("hinan-orchestrator"),
            "{krate} depends on the orchestrator"
        );
    }
}
