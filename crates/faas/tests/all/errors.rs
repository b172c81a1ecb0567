//! Bad input gets a clear JSON error with a stable code and status, never a 500 or a run.

use serde_json::json;

use crate::require_docker;
use crate::support::{assert_error, shared, IMAGE};

#[tokio::test]
async fn malformed_and_wrongly_shaped_bodies() {
    require_docker!();
    let c = shared().client();
    let (s, v) = c
        .post_raw("/api/v1/execute", b"{\"command\": ".to_vec())
        .await;
    assert_error(s, &v, 400, "invalid_json");
    let (s, v) = c.post_raw("/api/v1/execute", Vec::new()).await;
    assert_error(s, &v, 400, "invalid_json");
    let (s, v) = c.post("/api/v1/execute", json!({"image": IMAGE})).await;
    assert_error(s, &v, 400, "invalid_request");
    let (s, v) = c
        .post(
            "/api/v1/execute",
            json!({"command": "true", "env_vars": "A=1"}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_request");
}

#[tokio::test]
async fn unknown_mode_or_runtime_is_refused_not_run() {
    require_docker!();
    let c = shared().client();
    let (s, v) = c
        .post(
            "/api/v1/execute",
            json!({"command": "true", "mode": "turbo"}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_request");
    assert!(v["error"]["message"].as_str().unwrap().contains("turbo"));
    let (s, v) = c
        .post(
            "/api/v1/execute",
            json!({"command": "true", "runtime": "lxc"}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_request");
}

#[tokio::test]
async fn modes_and_runtimes_not_offered_say_unsupported() {
    require_docker!();
    let c = shared().client();
    // The stateful modes exist; what they need must be there.
    let (s, v) = c
        .post(
            "/api/v1/execute",
            json!({"command": "true", "mode": "branched", "image": IMAGE}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_request");
    for body in [
        json!({"command": "true", "mode": "branched", "branch_from": "nope"}),
        json!({"command": "true", "mode": "checkpointed", "snapshot_id": "nope"}),
        json!({"command": "true", "mode": "persistent", "instance_id": "nope"}),
    ] {
        let (s, v) = c.post("/api/v1/execute", body).await;
        assert_error(s, &v, 404, "not_found");
    }
    let (s, v) = c
        .post(
            "/api/v1/execute",
            json!({"command": "true", "runtime": "docker", "isolation": "gvisor", "image": IMAGE}),
        )
        .await;
    assert_error(s, &v, 501, "unsupported");
    let (s, v) = c
        .post(
            "/api/v1/execute",
            json!({"command": "true", "runtime": "firecracker"}),
        )
        .await;
    assert_error(s, &v, 501, "unsupported");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("microVM"),
        "{v}"
    );
    let (s, v) = c
        .post(
            "/api/v1/execute",
            json!({"command": "true", "network": "bridge"}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_request");
    for bad in [
        json!({"egress": "sometimes"}),
        json!({"egress": "deny", "allow": ["10.0.0.1/8"]}),
        json!({"egress": "deny", "allow": ["bad name.com"]}),
        json!({"egress": "deny", "allow": ["2001:db8::/32"]}),
        json!({"egress": "deny", "nope": []}),
        json!(42),
    ] {
        let (s, v) = c
            .post(
                "/api/v1/execute",
                json!({"command": "true", "network": bad}),
            )
            .await;
        assert_error(s, &v, 400, "invalid_request");
    }
}

#[tokio::test]
async fn missing_image_is_404() {
    require_docker!();
    let c = shared().client();
    let (s, v) = c
        .post(
            "/api/v1/execute",
            json!({"command": "true", "image": "faas/no-such-image:nope"}),
        )
        .await;
    assert_error(s, &v, 404, "image_not_found");
    let (s, v) = c
        .post(
            "/api/v1/prewarm",
            json!({"image": "faas/no-such-image:nope", "count": 1}),
        )
        .await;
    assert_error(s, &v, 404, "image_not_found");
}

#[tokio::test]
async fn empty_command_and_bad_limits_are_400() {
    require_docker!();
    let c = shared().client();
    for body in [
        json!({"command": ""}),
        json!({"command": "   "}),
        json!({"command": []}),
        json!({"command": "true", "timeout_ms": 0}),
        json!({"command": "true", "timeout_ms": 100_000_000u64}),
        json!({"command": "true", "memory_mb": 1}),
        json!({"command": "true", "cpu_cores": 0}),
        json!({"command": "true", "stdin": "a", "stdin_b64": "YQ=="}),
        json!({"command": "true", "snapshot_id": "x"}),
    ] {
        let (s, v) = c.post("/api/v1/execute", body.clone()).await;
        assert_error(s, &v, 400, "invalid_request");
    }
    let (s, v) = c
        .post("/api/v1/execute/advanced", json!({"command": "true"}))
        .await;
    assert_error(s, &v, 400, "invalid_request");
    let (s, v) = c
        .post("/api/v1/prewarm", json!({"image": IMAGE, "count": 100000}))
        .await;
    assert_error(s, &v, 400, "invalid_request");
}

#[tokio::test]
async fn oversize_body_is_413() {
    require_docker!();
    let c = shared().client();
    let big = "x".repeat(9 * 1024 * 1024);
    let (s, v) = c
        .post("/api/v1/execute", json!({"command": "true", "stdin": big}))
        .await;
    assert_error(s, &v, 413, "payload_too_large");
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    require_docker!();
    let c = shared().client();
    let (s, v) = c.get("/api/v1/nope").await;
    assert_error(s, &v, 404, "not_found");
    let (s, v) = c.get("/api/v1/execute").await;
    assert_error(s, &v, 405, "method_not_allowed");
}

#[tokio::test]
async fn advanced_endpoint_runs_with_a_mode() {
    require_docker!();
    let c = shared().client();
    let (s, v) = c
        .post(
            "/api/v1/execute/advanced",
            json!({"command": "echo adv", "mode": "ephemeral", "image": IMAGE}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["stdout"], "adv\n");
}
