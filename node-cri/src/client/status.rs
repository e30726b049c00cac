//! gRPC status -> [`RuntimeError`]: how a CRI runtime's answers become node-core's typed errors.

use std::time::Duration;

use node_core::RuntimeError;
use tonic::{Code, Status};

/// What a call was about, to give its errors their context.
#[derive(Debug, Clone)]
pub(crate) struct CallContext {
    /// The CRI method, e.g. `CreateContainer`.
    pub method: &'static str,
    /// What a `NotFound` is about: `pod sandbox`, `container`, `image` or `runtime`.
    pub kind: &'static str,
    /// The id or reference the call was about (empty when none).
    pub id: String,
    /// The deadline the call ran under, reported by [`RuntimeError::Timeout`].
    pub deadline: Duration,
    /// Whether the call is `PullImage` (its failures are [`RuntimeError::ImagePull`]).
    pub pull: bool,
    /// Whether the call sets up pod networking (`RunPodSandbox`).
    pub network: bool,
    /// The image a container is created from (`CreateContainer`; empty otherwise).
    pub image: String,
}

impl CallContext {
    pub(crate) fn new(
        method: &'static str,
        kind: &'static str,
        id: impl Into<String>,
        deadline: Duration,
    ) -> Self {
        Self {
            method,
            kind,
            id: id.into(),
            deadline,
            pull: false,
            network: false,
            image: String::new(),
        }
    }
}

/// Whether a runtime's message says that something does not exist. containerd answers some
/// lookups with `Unknown` and a text like `an error occurred when try to find container "x": not
/// found` instead of the `NotFound` code.
pub(crate) fn says_not_found(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("not found") || m.contains("does not exist") || m.contains("no such")
}

/// Whether a pull failure is about the reference itself rather than the registry.
fn says_bad_reference(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("invalid reference format")
        || m.contains("failed to parse image reference")
        || m.contains("parse image name")
}

/// Whether a sandbox failure is about pod networking.
fn says_network(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("failed to setup network")
        || m.contains("failed to set up network")
        || m.contains("cni")
        || m.contains("network for sandbox")
        || m.contains("failed to teardown network")
}

/// Whether a status was made by the client's transport (the connection broke, the runtime went
/// away mid-call) rather than sent by the runtime: tonic gives those `Unavailable`, or `Unknown`
/// with the local error as their source; a status from the runtime never has a source.
pub(crate) fn is_transport_failure(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown | Code::Internal | Code::Cancelled => {
            std::error::Error::source(status).is_some()
        }
        _ => false,
    }
}

/// Whether the runtime says it is still starting: containerd's CRI plugin answers `Unknown`
/// "server is not initialized yet" while it recovers its state after a restart.
pub(crate) fn says_starting(status: &Status) -> bool {
    status.code() == Code::Unknown && status.message().contains("not initialized yet")
}

/// Whether a failed call provably never reached the runtime, so that repeating it cannot do
/// anything twice: the connection was refused or absent, or was already broken when the request
/// was written (`EPIPE`: the process at the other end was gone), or the runtime turned the call
/// away while starting.
pub(crate) fn never_delivered(status: &Status) -> bool {
    if says_starting(status) {
        return true;
    }
    if !is_transport_failure(status) {
        return false;
    }
    let mut cur = std::error::Error::source(status);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::NotFound
            )
        {
            return true;
        }
        // h2 reports a failed write as its own error, with the io error's text
        if e.to_string().contains("broken pipe") {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The status's message followed by its sources (the local transport error, if any).
fn full_message(status: &Status) -> String {
    let mut s = status.message().to_string();
    let mut cur = std::error::Error::source(status);
    while let Some(e) = cur {
        let text = e.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = e.source();
    }
    s
}

/// Whether a runtime's message says the object is in the wrong state for the call. containerd
/// answers `Unknown` with e.g. `container is in CONTAINER_RUNNING state`.
fn says_wrong_state(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    (m.contains(" is in container_") || m.contains(" is in sandbox_")) && m.contains(" state")
        || m.contains("is not running")
        || m.contains("not in running state")
        || m.contains("not ready")
}

/// Whether a runtime's message says a name is taken: containerd answers `Unknown` with
/// `failed to reserve container name "x": name "x" is reserved for "<id>"`.
fn says_name_taken(message: &str) -> bool {
    message.contains("is reserved for")
}

/// Map a gRPC status of a CRI call to a [`RuntimeError`], keeping the runtime's message.
///
/// Besides the gRPC codes, a few of containerd's `Unknown` answers are recognised by their text:
/// not found, name reserved (already exists), wrong state (failed precondition), bad image
/// reference (invalid argument), still starting (unavailable), CNI failures (network).
pub(crate) fn map_status(status: &Status, ctx: &CallContext) -> RuntimeError {
    let code = status.code();
    if code == Code::Cancelled && status.message().contains("Timeout expired") {
        return RuntimeError::Timeout(ctx.deadline);
    }
    if says_starting(status) {
        return RuntimeError::Unavailable(format!("{}: {}", ctx.method, status.message()));
    }
    if is_transport_failure(status) {
        return RuntimeError::Unavailable(format!("{}: {}", ctx.method, full_message(status)));
    }
    let message = if status.message().is_empty() {
        format!("{} answered {:?}", ctx.method, code)
    } else {
        status.message().to_string()
    };
    let with_method = || format!("{}: {message}", ctx.method);
    match code {
        Code::DeadlineExceeded => return RuntimeError::Timeout(ctx.deadline),
        Code::Unimplemented => return RuntimeError::Unimplemented(ctx.method),
        Code::ResourceExhausted => return RuntimeError::ResourceExhausted(with_method()),
        _ => {}
    }
    if ctx.pull {
        return if code == Code::InvalidArgument || says_bad_reference(&message) {
            RuntimeError::InvalidArgument(format!("image {:?}: {message}", ctx.id))
        } else {
            RuntimeError::ImagePull {
                image: ctx.id.clone(),
                message,
            }
        };
    }
    let unknown = code == Code::Unknown;
    if code == Code::NotFound || unknown && says_not_found(&message) {
        // a container creation is about a pod and an image: the message says which is missing
        if !ctx.image.is_empty() && message.to_ascii_lowercase().contains("image") {
            return RuntimeError::NotFound {
                kind: "image",
                id: ctx.image.clone(),
            };
        }
        if !ctx.id.is_empty() || code == Code::NotFound {
            return RuntimeError::NotFound {
                kind: ctx.kind,
                id: ctx.id.clone(),
            };
        }
    }
    match code {
        Code::InvalidArgument => RuntimeError::InvalidArgument(with_method()),
        Code::AlreadyExists => RuntimeError::AlreadyExists(with_method()),
        Code::FailedPrecondition => RuntimeError::FailedPrecondition(with_method()),
        _ if unknown && says_name_taken(&message) => RuntimeError::AlreadyExists(with_method()),
        _ if ctx.network && says_network(&message) => RuntimeError::Network(with_method()),
        _ if unknown && says_wrong_state(&message) => {
            RuntimeError::FailedPrecondition(with_method())
        }
        _ => RuntimeError::Internal(with_method()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(method: &'static str, kind: &'static str, id: &str) -> CallContext {
        CallContext::new(method, kind, id, Duration::from_secs(7))
    }

    #[test]
    fn codes_map_to_typed_errors_with_the_runtime_message() {
        let c = ctx("StartContainer", "container", "abc");
        assert!(
            matches!(map_status(&Status::not_found("x"), &c), RuntimeError::NotFound { kind: "container", ref id } if id == "abc")
        );
        match map_status(&Status::invalid_argument("empty id"), &c) {
            RuntimeError::InvalidArgument(m) => assert_eq!(m, "StartContainer: empty id"),
            e => panic!("{e:?}"),
        }
        assert!(
            matches!(map_status(&Status::already_exists("name reserved"), &c), RuntimeError::AlreadyExists(m) if m.contains("name reserved"))
        );
        assert!(
            matches!(map_status(&Status::failed_precondition("running"), &c), RuntimeError::FailedPrecondition(m) if m.contains("running"))
        );
        assert!(
            matches!(map_status(&Status::unavailable("conn refused"), &c), RuntimeError::Unavailable(m) if m.contains("conn refused"))
        );
        assert!(
            matches!(map_status(&Status::deadline_exceeded("slow"), &c), RuntimeError::Timeout(d) if d == Duration::from_secs(7))
        );
        assert!(matches!(
            map_status(&Status::unimplemented("nope"), &c),
            RuntimeError::Unimplemented("StartContainer")
        ));
        assert!(
            matches!(map_status(&Status::resource_exhausted("disk"), &c), RuntimeError::ResourceExhausted(m) if m.contains("disk"))
        );
        match map_status(&Status::internal("runc exploded"), &c) {
            RuntimeError::Internal(m) => assert_eq!(m, "StartContainer: runc exploded"),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn local_transport_errors_are_unavailable() {
        let c = ctx("ListPodSandbox", "pod sandbox", "");
        // what tonic makes of a connection that broke mid-call: Unknown, with the local error as
        // its source
        let broken = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "broken pipe",
        )));
        assert_eq!(broken.code(), Code::Unknown);
        assert!(is_transport_failure(&broken));
        match map_status(&broken, &c) {
            RuntimeError::Unavailable(m) => assert!(
                m.starts_with("ListPodSandbox: ") && m.contains("broken pipe"),
                "{m}"
            ),
            e => panic!("{e:?}"),
        }
        // a write on a connection whose peer is gone never reached anyone
        assert!(never_delivered(&broken));
        let refused = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        )));
        assert!(never_delivered(&refused));
        let reset = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset",
        )));
        assert!(
            is_transport_failure(&reset) && !never_delivered(&reset),
            "a reset may follow delivery"
        );
        assert!(!never_delivered(&Status::unavailable("overloaded")));
        // containerd's CRI plugin while it recovers after a restart
        let starting = Status::unknown("server is not initialized yet");
        assert!(says_starting(&starting));
        assert!(never_delivered(&starting));
        assert!(
            matches!(map_status(&starting, &c), RuntimeError::Unavailable(m) if m.contains("not initialized"))
        );
        // an Unknown sent by the runtime is not a transport failure
        assert!(!is_transport_failure(&Status::unknown("boom")));
        assert!(matches!(
            map_status(&Status::unknown("boom"), &c),
            RuntimeError::Internal(_)
        ));
    }

    #[test]
    fn containerd_unknown_not_found_is_not_found() {
        let c = ctx("ContainerStatus", "container", "deadbeef");
        let s =
            Status::unknown("an error occurred when try to find container \"deadbeef\": not found");
        assert!(
            matches!(map_status(&s, &c), RuntimeError::NotFound { kind: "container", ref id } if id == "deadbeef")
        );
        // an Unknown that is not about existence stays Internal
        let s = Status::unknown("failed to create containerd task: OCI runtime create failed");
        assert!(matches!(map_status(&s, &c), RuntimeError::Internal(_)));
    }

    #[test]
    fn containerd_texts_are_typed() {
        let c = ctx("StartContainer", "container", "abc");
        let s = Status::unknown(
            "failed to set starting state for container \"abc\": container is in CONTAINER_RUNNING state",
        );
        assert!(
            matches!(map_status(&s, &c), RuntimeError::FailedPrecondition(m) if m.contains("CONTAINER_RUNNING"))
        );
        let c = ctx("CreateContainer", "pod sandbox", "pod1");
        let s = Status::unknown(
            "failed to reserve container name \"x_p_ns_uid_0\": name \"x_p_ns_uid_0\" is reserved for \"abc\"",
        );
        assert!(
            matches!(map_status(&s, &c), RuntimeError::AlreadyExists(m) if m.contains("reserved"))
        );
        // CreateContainer: the missing thing is the image, not the pod
        let mut c = ctx("CreateContainer", "pod sandbox", "pod1");
        c.image = "reg/x:1".into();
        let s = Status::not_found("failed to get image \"reg/x:1\": not found");
        assert!(
            matches!(map_status(&s, &c), RuntimeError::NotFound { kind: "image", ref id } if id == "reg/x:1")
        );
        let s = Status::not_found("failed to find sandbox \"pod1\": not found");
        assert!(
            matches!(map_status(&s, &c), RuntimeError::NotFound { kind: "pod sandbox", ref id } if id == "pod1")
        );
    }

    #[test]
    fn pull_failures_name_the_image() {
        let mut c = ctx("PullImage", "image", "127.0.0.1:5000/missing:1");
        c.pull = true;
        let s = Status::unknown(
            "failed to pull and unpack image \"127.0.0.1:5000/missing:1\": not found",
        );
        match map_status(&s, &c) {
            RuntimeError::ImagePull { image, message } => {
                assert_eq!(image, "127.0.0.1:5000/missing:1");
                assert!(message.contains("not found"));
            }
            e => panic!("{e:?}"),
        }
        let s = Status::unknown("failed to pull image \"UPPER//x\": invalid reference format");
        assert!(
            matches!(map_status(&s, &c), RuntimeError::InvalidArgument(m) if m.contains("UPPER//x") || m.contains("invalid reference"))
        );
        assert!(matches!(
            map_status(&Status::unavailable("gone"), &c),
            RuntimeError::Unavailable(_)
        ));
    }

    #[test]
    fn sandbox_network_failures_are_network_errors() {
        let mut c = ctx("RunPodSandbox", "pod sandbox", "");
        c.network = true;
        let s = Status::unknown(
            "failed to setup network for sandbox \"x\": plugin type=\"bridge\" failed",
        );
        assert!(matches!(map_status(&s, &c), RuntimeError::Network(m) if m.contains("bridge")));
    }
}
