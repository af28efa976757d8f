//! The masters of a cluster as the store knows them: `/masters` and `/api/masters`, leases and
//! runs (epochs) across restarts.

use crate::harness::{MasterSetup, TestMaster, http_client};

fn only_master(master: &TestMaster) -> serde_json::Value {
    let rows = master.api("/api/masters");
    let rows = rows.as_array().expect("a list of masters");
    assert_eq!(rows.len(), 1, "one master: {rows:?}");
    rows[0].clone()
}

#[test]
fn a_master_shows_its_lease_and_each_run_takes_a_new_epoch() {
    let mut master = TestMaster::start_with(MasterSetup::default());
    let first = only_master(&master);
    assert_eq!(first["this"], true);
    assert_eq!(first["alive"], true);
    assert_eq!(first["state"], "up");
    assert_eq!(first["config_differs"], false);
    assert!(first["lease_expires_at"].as_f64() > first["renewed_at"].as_f64());
    let name = first["name"].as_str().expect("a name").to_string();
    let epoch = first["epoch"].as_i64().expect("an epoch");

    let page = http_client()
        .get(format!("http://127.0.0.1:{}/masters", master.http_port))
        .send()
        .expect("GET /masters")
        .text()
        .expect("body");
    let start = page
        .find(&format!("id=\"master-{name}\""))
        .unwrap_or_else(|| panic!("no row for {name}: {page}"));
    let row = &page[start..start + page[start..].find("</tr>").expect("row ends")];
    assert!(row.contains("(this one)") && row.contains(">up<"), "{row}");

    // A crash and a restart: a new run of the same master, not a second master.
    master.kill_hard();
    let master = master.start_again();
    let second = only_master(&master);
    assert_eq!(second["name"], name.as_str());
    assert_eq!(second["epoch"].as_i64(), Some(epoch + 1));
    assert_eq!(second["alive"], true);
}
