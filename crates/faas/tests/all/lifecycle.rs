//! Clean-up: graceful shutdown, restart after `kill -9`, client disconnects.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::require_docker;
use crate::support::{Server, IMAGE};

#[tokio::test]
async fn graceful_shutdown_destroys_warm_pools() {
    require_docker!();
    let server = Server::start();
    let c = server.client();
    let (s, v) = c
        .post("/api/v1/prewarm", json!({"image": IMAGE, "count": 2}))
        .await;
    assert_eq!(s, 200, "{v}");
    c.wait_pool_ready(IMAGE, 2).await;
    assert_eq!(server.sandboxes().len(), 2);
    assert!(server.stop().success());
    assert_eq!(
        server.sandboxes(),
        Vec::<String>::new(),
        "containers left after shutdown"
    );
}

#[tokio::test]
async fn restart_after_kill_removes_leftovers() {
    require_docker!();
    let server = Server::start();
    let c = server.client();
    c.post("/api/v1/prewarm", json!({"image": IMAGE, "count": 2}))
        .await;
    c.wait_pool_ready(IMAGE, 2).await;
    server.kill9();
    assert!(
        server.sandboxes().len() >= 2,
        "kill -9 should leave the pool behind"
    );
    let again = Server::start_with(server.data_dir.clone(), &[]);
    assert_eq!(
        again.sandboxes(),
        Vec::<String>::new(),
        "leftovers not removed on start"
    );
    let v = again.client().exec(json!({"command": "echo back"})).await;
    assert_eq!(v["stdout"], "back\n");
    assert!(again.stop().success());
    assert!(again.sandboxes().is_empty());
}

#[tokio::test]
async fn client_disconnect_still_cleans_up() {
    require_docker!();
    let server = Server::start();
    // The key is checked (and cached) first: the request below must reach its run before the
    // client gives up, however loaded the machine is.
    let (s, _) = server.client().get("/api/v1/auth/whoami").await;
    assert_eq!(s, 200);
    let http = reqwest::Client::builder()
        .default_headers(crate::support::auth_headers(&server.admin_key))
        .timeout(Duration::from_millis(700))
        .build()
        .unwrap();
    let r = http
        .post(format!("{}/api/v1/execute", server.url))
        .json(&json!({"command": "sleep 2", "image": IMAGE}))
        .send()
        .await;
    assert!(r.is_err(), "the client should have given up");
    let start = Instant::now();
    while !server.sandboxes().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "container left after the client went away"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, m) = server.client().get("/api/v1/metrics").await;
    assert_eq!(m["sandboxes_live"], 0, "{m}");
    assert_eq!(
        m["executions_total"], 1,
        "the run finished after the client left: {m}"
    );
    assert!(server.stop().success());
}

#[tokio::test]
async fn a_dead_warm_sandbox_is_replaced_not_reported() {
    require_docker!();
    let server = Server::start();
    let c = server.client();
    c.post("/api/v1/prewarm", json!({"image": IMAGE, "count": 1}))
        .await;
    c.wait_pool_ready(IMAGE, 1).await;
    let victims = server.sandboxes();
    assert_eq!(victims.len(), 1);
    server.kill_sandbox(&victims[0]);
    let v = c
        .exec(json!({"command": "echo survived", "mode": "cached"}))
        .await;
    assert_eq!(v["stdout"], "survived\n");
    assert_eq!(v["warm"], false, "{v}");
    assert!(server.stop().success());
    assert!(server.sandboxes().is_empty());
}

#[tokio::test]
async fn cached_requests_for_a_missing_image_leave_no_pool() {
    require_docker!();
    let c = crate::support::shared().client();
    let (s, _) = c
        .post(
            "/api/v1/execute",
            json!({"command": "true", "mode": "cached", "image": "faas/missing:1"}),
        )
        .await;
    assert_eq!(s, 404);
    let (_, pools) = c.get("/api/v1/pools").await;
    assert!(!pools.to_string().contains("faas/missing:1"), "{pools}");
}
