//! The router without a socket and without KVM: everything that does not need a VM built.

use super::*;

fn call(method: &str, path: &str, body: &str, state: &mut ApiState) -> Reply {
    handle(method, path, body.as_bytes(), state)
}

/// The messages of an error reply, which must be a JSON array of non-empty one-line strings
/// (the error chain, outermost first), as Cloud Hypervisor's clients read it.
fn messages_of(reply: &Reply) -> Vec<String> {
    let body = reply.response.body.as_deref().expect("error body");
    let messages: Vec<String> = serde_json::from_str(body).expect("a JSON array of strings");
    assert!(!messages.is_empty(), "{body}");
    for message in &messages {
        assert!(!message.is_empty() && !message.contains('\n'), "{body}");
    }
    messages
}

/// The messages of an error reply, joined with ": ".
fn error_of(reply: &Reply) -> String {
    messages_of(reply).join(": ")
}

#[test]
fn ping_answers_with_the_version() {
    let mut state = ApiState::new();
    let reply = call("GET", "/api/v1/vmm.ping", "", &mut state);
    assert_eq!(reply.response.status, 200);
    let value: serde_json::Value =
        serde_json::from_str(reply.response.body.as_deref().unwrap()).unwrap();
    assert_eq!(value["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(value["pid"], std::process::id());
    assert!(!reply.exit);
}

#[test]
fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
    let mut state = ApiState::new();
    for path in [
        "/",
        "/api/v1/vm.nope",
        "/api/v1/vm.info/",
        "/api/v2/vm.info",
    ] {
        let reply = call("GET", path, "", &mut state);
        assert_eq!(reply.response.status, 404, "{path}");
        assert!(error_of(&reply).contains(path));
    }
    for &(method, path) in ENDPOINTS {
        let other = if method == "GET" { "PUT" } else { "GET" };
        for wrong in [other, "POST", "DELETE", "HEAD"] {
            let reply = call(wrong, path, "", &mut state);
            assert_eq!(reply.response.status, 405, "{wrong} {path}");
            assert_eq!(reply.response.allow, Some(method), "{wrong} {path}");
            assert!(error_of(&reply).contains(method));
        }
    }
}

#[test]
fn without_a_vm_requests_that_need_one_conflict() {
    let mut state = ApiState::new();
    for (method, path) in [
        ("PUT", "/api/v1/vm.boot"),
        ("PUT", "/api/v1/vm.pause"),
        ("PUT", "/api/v1/vm.resume"),
        ("PUT", "/api/v1/vm.shutdown"),
        ("GET", "/api/v1/vm.info"),
        ("GET", "/api/v1/vm.counters"),
    ] {
        let reply = call(method, path, "", &mut state);
        assert_eq!(reply.response.status, 409, "{path}");
        assert!(error_of(&reply).contains("vm.create"), "{path}");
    }
    // Deleting nothing is fine, as in Cloud Hypervisor.
    let reply = call("PUT", "/api/v1/vm.delete", "", &mut state);
    assert_eq!(reply.response.status, 204);
    assert_eq!(reply.response.body, None);
}

#[test]
fn vmm_shutdown_asks_the_server_to_exit() {
    let mut state = ApiState::new();
    let reply = call("PUT", "/api/v1/vmm.shutdown", "", &mut state);
    assert_eq!(reply.response.status, 204);
    assert!(reply.exit);
    assert!(!call("GET", "/api/v1/vmm.shutdown", "", &mut state).exit);
}

#[test]
fn bad_create_bodies_are_400_and_leave_no_vm() {
    let mut state = ApiState::new();
    let cases = [
        ("", "needs a VmConfig"),
        ("   ", "needs a VmConfig"),
        ("{", "VM config JSON"),
        ("[1,2]", "VM config JSON"),
        (
            "{\"payload\":{\"kernel\":\"/k\"},\"net\":[{}]}",
            "net: net devices (virtio-net) are not supported by keel",
        ),
        (
            "{\"payload\":{\"kernel\":\"/k\"},\"consle\":{}}",
            "unknown field `consle`",
        ),
        ("{\"payload\":{}}", "payload.kernel: missing"),
        (
            "{\"payload\":{\"kernel\":\"/k\"},\"memory\":{\"size\":12345}}",
            "memory",
        ),
        (
            "{\"payload\":{\"kernel\":\"/nonexistent/vmlinux\"}}",
            "cannot build the VM",
        ),
    ];
    for (body, expected) in cases {
        let reply = call("PUT", "/api/v1/vm.create", body, &mut state);
        assert_eq!(reply.response.status, 400, "{body}");
        let message = error_of(&reply);
        assert!(message.contains(expected), "{body}: {message}");
        assert_eq!(state.vm_state(), None);
    }
    let reply = handle("PUT", "/api/v1/vm.create", b"{\xff}", &mut state);
    assert_eq!(reply.response.status, 400);
    assert!(error_of(&reply).contains("UTF-8"));
}

#[test]
fn error_bodies_are_the_chain_one_string_per_level() {
    let mut state = ApiState::new();
    let body = r#"{"payload": {"kernel": "/k"}, "net": [{"tap": "tap0"}]}"#;
    let reply = call("PUT", "/api/v1/vm.create", body, &mut state);
    assert_eq!(reply.response.status, 400);
    assert_eq!(
        messages_of(&reply),
        [
            "the VM config is refused",
            "net: net devices (virtio-net) are not supported by keel"
        ]
    );
    // A value the CLI refuses too: its error is the third level.
    let body = r#"{"payload": {"kernel": "/k"}, "cpus": {"boot_vcpus": 0}}"#;
    let messages = messages_of(&call("PUT", "/api/v1/vm.create", body, &mut state));
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert!(messages[1].starts_with("cpus.boot_vcpus: "), "{messages:?}");
    assert!(messages[2].starts_with("--cpus: "), "{messages:?}");
    // A VM that cannot be built: the build error below the refusal.
    let body = r#"{"payload": {"kernel": "/nonexistent/vmlinux"}}"#;
    let messages = messages_of(&call("PUT", "/api/v1/vm.create", body, &mut state));
    assert_eq!(messages[0], "cannot build the VM", "{messages:?}");
    assert!(messages.len() >= 2, "{messages:?}");
    assert!(messages[1..]
        .iter()
        .any(|m| m.contains("/nonexistent/vmlinux")));
    // Errors of one level are one string.
    let reply = call("GET", "/api/v1/vm.nope", "", &mut state);
    assert_eq!(messages_of(&reply), ["no endpoint /api/v1/vm.nope"]);
}

#[test]
fn states_are_spelled_as_cloud_hypervisor_spells_them() {
    assert_eq!(state_name(VmState::Created), "Created");
    assert_eq!(state_name(VmState::Running), "Running");
    assert_eq!(state_name(VmState::Paused), "Paused");
    assert_eq!(state_name(VmState::Stopped), "Shutdown");
}

#[test]
fn error_chains_stay_on_one_line() {
    let e = crate::api::ApiError::Listen {
        path: "/tmp/a\nb".into(),
        source: std::io::Error::other("inner"),
    };
    assert_eq!(error_chain(&e), "cannot listen on /tmp/a b: inner");
    assert_eq!(error_messages(&e), ["cannot listen on /tmp/a b", "inner"]);
}

#[test]
fn parsing_needs_no_state_and_keeps_a_bad_create_body_for_later() {
    for &(method, path) in ENDPOINTS {
        let body = if path.ends_with("vm.create") { "{" } else { "" };
        let call = parse(method, path, body.as_bytes());
        assert!(call.is_ok(), "{method} {path}: {call:?}");
    }
    match parse("PUT", "/api/v1/vm.create", b"{\"payload\":") {
        Ok(Call::Create(Err(RouteError::Config(_)))) => {}
        other => panic!("want a Create carrying its JSON error, got {other:?}"),
    }
    assert!(matches!(
        parse("GET", "/api/v1/vm.nope", b""),
        Err(RouteError::NotFound(_))
    ));
    assert!(matches!(
        parse("GET", "/api/v1/vm.boot", b""),
        Err(RouteError::Method { allow: "PUT", .. })
    ));
    // What a refused parse becomes on the wire.
    let reply = refused(RouteError::NotFound("/x".into()));
    assert_eq!((reply.response.status, reply.exit), (404, false));
}
