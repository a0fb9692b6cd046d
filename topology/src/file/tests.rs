//! Topology files: a good one reads back whole; each bad one gets its line.

use super::*;

const GOOD: &str = r#"
[[zone]]
name = "local-1"
region = "local"

[[node]]
name = "par1-a"
zone = "fr-par-1"
kind = "elastic-metal"
capabilities = ["gpu"]

[[node]]
name = "dev-a"
zone = "local-1"
region = "local"
kind = "instance"

[policy.worker]
node_kinds = ["instance"]
zones = ["local-1"]
spread = true
max_per_node = 10

[policy.trainer]
capabilities = ["gpu"]
regions = ["fr-par"]
pinned = true
"#;

fn error(text: &str) -> String {
    Topology::parse(text).unwrap_err().to_string()
}

#[test]
fn a_good_file_reads_back_whole() {
    let topology = Topology::parse(GOOD).unwrap();
    assert!(topology.knows_zone("local-1") && topology.knows_zone("pl-waw-3"));
    assert!(!topology.knows_zone("local-2"));
    assert_eq!(topology.nodes.len(), 2);
    assert_eq!(topology.node("par1-a").unwrap().capabilities, ["gpu"]);
    let worker = topology.policy("worker");
    assert_eq!(worker.node_kinds, [NodeKind::Instance]);
    assert_eq!(worker.max_per_node, Some(10));
    assert!(worker.spread && !worker.pinned);
    assert!(topology.policy("trainer").pinned);
    assert_eq!(topology.policy("counter"), &Policy::default());
    assert_eq!(Topology::parse("").unwrap(), Topology::default());
}

#[test]
fn an_unknown_zone_is_named() {
    let text = "[[node]]\nname = \"a\"\nzone = \"fr-par-4\"\nkind = \"instance\"\n";
    assert_eq!(
        error(text),
        "node \"a\": unknown zone \"fr-par-4\": not a Scaleway zone and not declared in [[zone]]"
    );
    let text = "[policy.worker]\nzones = [\"de-fra-1\"]\n";
    assert_eq!(
        error(text),
        "policy worker: unknown zone \"de-fra-1\": not a Scaleway zone and not declared in [[zone]]"
    );
    let text = "[policy.worker]\nregions = [\"de-fra\"]\n";
    assert_eq!(
        error(text),
        "policy worker: unknown region \"de-fra\": no known zone belongs to it"
    );
    let text = "[[zone]]\nname = \"Paris\"\nregion = \"fr-par\"\n";
    assert_eq!(
        error(text),
        "zone \"Paris\": invalid zone \"Paris\": expected <region>-<number>, such as fr-par-1"
    );
}

#[test]
fn a_zone_outside_its_region_is_named() {
    let text = "[[zone]]\nname = \"nl-ams-4\"\nregion = \"fr-par\"\n";
    assert_eq!(
        error(text),
        "zone \"nl-ams-4\": zone \"nl-ams-4\" is outside region \"fr-par\" (its region is \"nl-ams\")"
    );
    let text =
        "[[node]]\nname = \"a\"\nzone = \"fr-par-1\"\nregion = \"pl-waw\"\nkind = \"instance\"\n";
    assert_eq!(
        error(text),
        "node \"a\": zone \"fr-par-1\" is outside region \"pl-waw\" (its region is \"fr-par\")"
    );
}

#[test]
fn a_duplicate_node_name_is_named() {
    let node = "[[node]]\nname = \"par1-a\"\nzone = \"fr-par-1\"\nkind = \"instance\"\n";
    assert_eq!(
        error(&format!("{node}{node}")),
        "duplicate node name \"par1-a\""
    );
}

#[test]
fn an_unknown_kind_is_named() {
    let text = "[[node]]\nname = \"a\"\nzone = \"fr-par-1\"\nkind = \"vm\"\n";
    assert_eq!(
        error(text),
        "node \"a\": unknown node kind \"vm\": expected elastic-metal or instance"
    );
    let text = "[policy.worker]\nnode_kinds = [\"gpu-box\"]\n";
    assert_eq!(
        error(text),
        "policy worker: unknown node kind \"gpu-box\": expected elastic-metal or instance"
    );
}

#[test]
fn a_policy_no_node_satisfies_is_named() {
    let nodes = "[[node]]\nname = \"a\"\nzone = \"fr-par-1\"\nkind = \"instance\"\n";
    let text = format!(
        "{nodes}[policy.trainer]\nnode_kinds = [\"elastic-metal\"]\ncapabilities = [\"gpu\"]\n"
    );
    assert_eq!(
        error(&text),
        "policy trainer: no node satisfies it (node kind elastic-metal; capabilities gpu)"
    );
    let text = format!("{nodes}[policy.worker]\nzones = [\"nl-ams-1\"]\npinned = true\n");
    assert_eq!(
        error(&text),
        "policy worker: no node satisfies it (pinned to nl-ams-1)"
    );
    // Merely preferring an empty zone is satisfiable.
    let text = format!("{nodes}[policy.worker]\nzones = [\"nl-ams-1\"]\n");
    Topology::parse(&text).unwrap();
}

#[test]
fn syntax_errors_and_unknown_keys_give_their_line() {
    let message = error("[[node]]\nname = \"a\"\nzone = fr-par-1\n");
    assert!(message.starts_with("line 3: invalid "), "{message}");
    assert!(!message.contains('\n'), "{message}");
    let text = "\n[policy.worker]\nspread = true\nreplicas = 3\n";
    let message = error(text);
    assert!(
        message.starts_with("line 4: unknown field `replicas`"),
        "{message}"
    );
    assert_eq!(
        error("[policy.worker]\nmax_per_node = 0\n"),
        "policy worker: max_per_node must be at least 1"
    );
    assert_eq!(
        error("[policy.worker]\npinned = true\n"),
        "policy worker: pinned needs zones or regions to pin to"
    );
}
