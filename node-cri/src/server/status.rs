//! [`RuntimeError`] -> gRPC status: how a backend's typed errors go back on the wire.
//!
//! This is the inverse of the client's mapping (`client::status::map_status`): an error that
//! crosses a [`crate::CriClient`] -> [`super::CriServer`] pair comes out as the variant it went in
//! as (a unit test checks every variant), so a CRI proxy loses no meaning.

use std::any::Any;

use node_core::RuntimeError;
use tonic::{Code, Status};

/// The gRPC status of a backend error in a call of `method`.
///
/// The message is the error's own text prefixed with the method, except for
/// [`RuntimeError::NotFound`], [`RuntimeError::ImagePull`] and [`RuntimeError::Network`], whose
/// texts keep the shape CRI clients recognise (`... not found`, `failed to set up network for
/// sandbox ...`).
pub fn to_status(method: &str, err: &RuntimeError) -> Status {
    let text = err.to_string();
    let prefixed = || format!("{method}: {text}");
    match err {
        RuntimeError::NotFound { .. } => Status::not_found(text),
        RuntimeError::InvalidArgument(_) => Status::invalid_argument(prefixed()),
        RuntimeError::AlreadyExists(_) => Status::already_exists(prefixed()),
        RuntimeError::FailedPrecondition(_) => Status::failed_precondition(prefixed()),
        RuntimeError::Unavailable(_) => Status::unavailable(prefixed()),
        RuntimeError::Timeout(_) => Status::deadline_exceeded(prefixed()),
        RuntimeError::Unimplemented(_) => Status::unimplemented(prefixed()),
        // containerd answers pull failures with Unknown and the image in the text
        RuntimeError::ImagePull { .. } => Status::unknown(format!("{method}: failed to {text}")),
        RuntimeError::Network(m) => Status::unknown(format!(
            "{method}: failed to set up network for sandbox: {m}"
        )),
        RuntimeError::ResourceExhausted(_) => Status::resource_exhausted(prefixed()),
        RuntimeError::Internal(_) | RuntimeError::Io { .. } => Status::internal(prefixed()),
        _ => Status::unknown(prefixed()),
    }
}

/// The status of a call whose backend future panicked: `Internal`, naming the method and the
/// panic's message.
pub fn panic_status(method: &str, panic: &(dyn Any + Send)) -> Status {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    Status::new(
        Code::Internal,
        format!("{method}: the runtime backend panicked: {what}"),
    )
}

/// An `InvalidArgument` status naming the method and what is wrong with the request.
pub fn invalid(method: &str, what: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{method}: {what}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::client::status::{CallContext, map_status};

    /// What the client makes of the status the server sends for `err`.
    fn round_trip(err: RuntimeError, ctx: &CallContext) -> RuntimeError {
        map_status(&to_status(ctx.method, &err), ctx)
    }

    fn ctx(method: &'static str, kind: &'static str, id: &str) -> CallContext {
        CallContext::new(method, kind, id, Duration::from_secs(9))
    }

    #[test]
    fn every_variant_survives_a_client_server_round_trip() {
        let c = ctx("ContainerStatus", "container", "abc");
        assert!(matches!(
            round_trip(RuntimeError::NotFound { kind: "container", id: "abc".into() }, &c),
            RuntimeError::NotFound { kind: "container", ref id } if id == "abc"
        ));
        assert!(matches!(
            round_trip(RuntimeError::InvalidArgument("empty id".into()), &c),
            RuntimeError::InvalidArgument(m) if m.contains("empty id")
        ));
        assert!(matches!(
            round_trip(RuntimeError::AlreadyExists("name x".into()), &c),
            RuntimeError::AlreadyExists(m) if m.contains("name x")
        ));
        assert!(matches!(
            round_trip(RuntimeError::FailedPrecondition("not running".into()), &c),
            RuntimeError::FailedPrecondition(m) if m.contains("not running")
        ));
        assert!(matches!(
            round_trip(RuntimeError::Unavailable("restarting".into()), &c),
            RuntimeError::Unavailable(m) if m.contains("restarting")
        ));
        assert!(matches!(
            round_trip(RuntimeError::Timeout(Duration::from_secs(2)), &c),
            RuntimeError::Timeout(d) if d == Duration::from_secs(9)
        ));
        assert!(matches!(
            round_trip(RuntimeError::Unimplemented("ContainerStats"), &c),
            RuntimeError::Unimplemented("ContainerStatus")
        ));
        assert!(matches!(
            round_trip(RuntimeError::ResourceExhausted("disk".into()), &c),
            RuntimeError::ResourceExhausted(m) if m.contains("disk")
        ));
        assert!(matches!(
            round_trip(RuntimeError::Internal("boom".into()), &c),
            RuntimeError::Internal(m) if m.contains("boom")
        ));
        let io = RuntimeError::Io {
            path: "/var/lib/x".into(),
            source: std::io::Error::other("disk on fire"),
        };
        assert!(matches!(
            round_trip(io, &c),
            RuntimeError::Internal(m) if m.contains("/var/lib/x") && m.contains("disk on fire")
        ));

        let mut pull = ctx("PullImage", "image", "reg/app:1");
        pull.pull = true;
        assert!(matches!(
            round_trip(RuntimeError::ImagePull { image: "reg/app:1".into(), message: "denied".into() }, &pull),
            RuntimeError::ImagePull { ref image, ref message } if image == "reg/app:1" && message.contains("denied")
        ));
        let mut run = ctx("RunPodSandbox", "pod sandbox", "default/web");
        run.network = true;
        assert!(matches!(
            round_trip(RuntimeError::Network("bridge nk0: no address".into()), &run),
            RuntimeError::Network(m) if m.contains("bridge nk0")
        ));
    }

    #[test]
    fn codes_are_the_cri_ones() {
        let nf = to_status(
            "ContainerStatus",
            &RuntimeError::NotFound {
                kind: "container",
                id: "x".into(),
            },
        );
        assert_eq!(nf.code(), Code::NotFound);
        assert!(nf.message().contains("not found"), "{}", nf.message());
        let t = to_status("ExecSync", &RuntimeError::Timeout(Duration::from_secs(1)));
        assert_eq!(
            t.code(),
            Code::DeadlineExceeded,
            "kubelet's probes want this"
        );
        let p = panic_status("Version", &"oh no");
        assert_eq!(p.code(), Code::Internal);
        assert!(p.message().contains("Version") && p.message().contains("oh no"));
        let p = panic_status("Version", &String::from("formatted 7"));
        assert!(p.message().contains("formatted 7"));
    }
}
