//! The test server itself: it starts, serves a database of its own, survives a restart with
//! its data, and refuses connections while stopped.

use impresario_pg::test_cluster::TestCluster;

#[test]
fn a_database_of_its_own_keeps_its_data_across_a_restart_and_is_down_while_stopped() {
    let pg = TestCluster::start();
    let url = pg.create_database("harness_check");
    pg.psql(&url, "CREATE TABLE t (v int); INSERT INTO t VALUES (42)")
        .unwrap();

    pg.restart();
    assert_eq!(pg.psql(&url, "SELECT v FROM t").unwrap(), "42");

    pg.stop();
    let down = pg.psql(&url, "SELECT 1").unwrap_err();
    assert!(
        down.contains("connection") || down.contains("refused"),
        "{down}"
    );
    pg.resume();
    assert_eq!(pg.psql(&url, "SELECT count(*) FROM t").unwrap(), "1");
}

#[test]
fn a_wrong_password_is_refused() {
    let pg = impresario_pg::test_cluster::shared();
    let url = pg.url("postgres").replace(pg.password(), "wrong");
    let refused = pg.psql(&url, "SELECT 1").unwrap_err();
    assert!(
        refused.contains("password authentication failed"),
        "{refused}"
    );
}
