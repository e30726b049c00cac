//! What [`forward_runtime_backend!`](crate::forward_runtime_backend) needs at its call sites.

/// Implement [`RuntimeBackend`](crate::RuntimeBackend) for a wrapper by forwarding the named
/// methods to an inner runtime, with a hook around each call, and the methods written after them
/// as they are.
///
/// ```text
/// forward_runtime_backend! {
///     impl RuntimeBackend for Wrapper {
///         forward [version, status, ...]
///         to self.inner around |name, call| ...;
///         async fn other_method(&self, ...) -> ... { ... }   // any number, written out
///     }
/// }
/// ```
///
/// Each forwarded method binds `name` to its own name in snake case (`"list_containers"`, a
/// `&'static str`) and `call` to the inner runtime's call with the same arguments (a future, not
/// yet awaited), then answers with the hook expression. `self.inner` is any field that derefs to a
/// [`RuntimeBackend`](crate::RuntimeBackend) (`Arc<dyn RuntimeBackend>`, a concrete runtime).
///
/// A method neither forwarded nor written keeps the trait's default (`Unimplemented` for the
/// optional calls); a required one missing, or one both forwarded and written, does not compile.
/// The impl is an `#[async_trait]` one: written methods are plain `async fn`s.
///
/// # Example: a layer that counts calls
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use node_core::{RuntimeBackend, RuntimeError, cri};
///
/// /// Counts the calls that reach the inner runtime, and refuses every exec.
/// struct Counting {
///     inner: Arc<dyn RuntimeBackend>,
///     calls: Mutex<Vec<&'static str>>,
/// }
///
/// impl Counting {
///     async fn count<T>(
///         &self,
///         name: &'static str,
///         call: impl std::future::Future<Output = Result<T, RuntimeError>>,
///     ) -> Result<T, RuntimeError> {
///         self.calls.lock().unwrap().push(name);
///         call.await
///     }
/// }
///
/// node_core::forward_runtime_backend! {
///     impl RuntimeBackend for Counting {
///         forward [
///             version, status, run_pod_sandbox, stop_pod_sandbox, remove_pod_sandbox,
///             pod_sandbox_status, list_pod_sandbox, create_container, start_container,
///             stop_container, remove_container, container_status, list_containers, exec_sync,
///         ]
///         to self.inner around |name, call| self.count(name, call).await;
///
///         // written here, not forwarded
///         async fn exec(&self, _req: cri::ExecRequest) -> Result<cri::ExecResponse, RuntimeError> {
///             Err(RuntimeError::FailedPrecondition("no exec here".into()))
///         }
///     }
/// }
/// ```
///
#[macro_export]
macro_rules! forward_runtime_backend {
    (
        impl RuntimeBackend for $ty:ty {
            forward [$($method:ident),* $(,)?]
            to $s:ident.$inner:tt around |$name:ident, $call:ident| $hook:expr;
            $($own:tt)*
        }
    ) => {
        $crate::forward_runtime_backend!(@next
            { $ty; $s $inner; $name $call $hook; [] { $($own)* } }
            $($method)*
        );
    };

    // each forwarded method's arguments and answer, then on to the next
    (@next $st:tt version $($m:ident)*) => { $crate::forward_runtime_backend!(@fn $st version() -> $crate::cri::VersionResponse; $($m)*); };
    (@next $st:tt status $($m:ident)*) => { $crate::forward_runtime_backend!(@fn $st status(verbose: bool) -> $crate::cri::StatusResponse; $($m)*); };
    (@next $st:tt run_pod_sandbox $($m:ident)*) => { $crate::forward_runtime_backend!(@fn $st run_pod_sandbox(req: $crate::cri::RunPodSandboxRequest) -> String; $($m)*); };
    (@next $st:tt stop_pod_sandbox $($m:ident)*) => { $crate::forward_runtime_backend!(@fn $st stop_pod_sandbox(id: &str) -> (); $($m)*); };
    (@next $st:tt remove_pod_sandbox $($m:ident)*) => { $crate::forward_runtime_backend!(@fn $st remove_pod_sandbox(id: &str) -> (); $($m)*); };
    (@next $st:tt pod_sandbox_status $($m:ident)*) => { $crate::forward_runtime_backend!(@fn $st pod_sandbox_status(id: &str, verbose: bool) -> $crate::cri::PodSandboxStatusResponse; $($m)*); };
    (@next $st:tt list_pod_sandbox $($m:ident)*) => { $crate::forward_runtime_backend!(@fn $st list_pod_sandbox(filter: Option<$crate::cri::PodSandboxFilter>) -> Vec<$crate::cri::PodSandbox>; $($m)*); };
    (@next $st:tt create_container $($m:ident)*) => { $crate::forward_runtime_backend!(@fn $st create_container(req: $crate::cri::CreateContainerRequest) -> String; $($m)*); };
    (@next $st:tt start_container $($m:ident)*) => { $crate::forward_runtime_backend!(@fn $st start_container(id: &str) -> (); $($m)*); };
    (@next $st:tt stop_container $($m:ident)*) => { $crate::forward_runtime_backend!(@fn $st stop_container(id: &str, timeout: ::std::time::Duration) -> (); $($m)*); };
    (@next $st:tt remove_container $($m:ident)*) => { $crate::forward_runtime_backend!(@fn $st remove_container(id: &str) -> (); $($m)*); };
    (@next $st:tt container_status $($m:ident)*) => { $crate::forward_runtime_backend!(@fn $st container_status(id: &str, verbose: bool) -> $crate::cri::ContainerStatusResponse; $($m)*); };
    (@next $st:tt list_containers $($m:ident)*) => { $crate::forward_runtime_backend!(@fn $st list_containers(filter: Option<$crate::cri::ContainerFilter>) -> Vec<$crate::cri::Container>; $($m)*); };
    (@next $st:tt exec_sync $($m:ident)*) => { $crate::forward_runtime_backend!(@fn $st exec_sync(id: &str, cmd: Vec<String>, timeout: ::std::time::Duration) -> $crate::cri::ExecSyncResponse; $($m)*); };
    (@next $st:tt exec $($m:ident)*) => { $crate::forward_runtime_backend!(@fn $st exec(req: $crate::cri::ExecRequest) -> $crate::cri::ExecResponse; $($m)*); };
    (@next $st:tt attach $($m:ident)*) => { $crate::forward_runtime_backend!(@fn $st attach(req: $crate::cri::AttachRequest) -> $crate::cri::AttachResponse; $($m)*); };
    (@next $st:tt port_forward $($m:ident)*) => { $crate::forward_runtime_backend!(@fn $st port_forward(req: $crate::cri::PortForwardRequest) -> $crate::cri::PortForwardResponse; $($m)*); };
    (@next $st:tt container_stats $($m:ident)*) => { $crate::forward_runtime_backend!(@fn $st container_stats(id: &str) -> $crate::cri::ContainerStats; $($m)*); };
    (@next $st:tt list_container_stats $($m:ident)*) => { $crate::forward_runtime_backend!(@fn $st list_container_stats(filter: Option<$crate::cri::ContainerStatsFilter>) -> Vec<$crate::cri::ContainerStats>; $($m)*); };
    (@next $st:tt pod_sandbox_stats $($m:ident)*) => { $crate::forward_runtime_backend!(@fn $st pod_sandbox_stats(id: &str) -> $crate::cri::PodSandboxStats; $($m)*); };
    (@next $st:tt list_pod_sandbox_stats $($m:ident)*) => { $crate::forward_runtime_backend!(@fn $st list_pod_sandbox_stats(filter: Option<$crate::cri::PodSandboxStatsFilter>) -> Vec<$crate::cri::PodSandboxStats>; $($m)*); };
    (@next $st:tt update_container_resources $($m:ident)*) => { $crate::forward_runtime_backend!(@fn $st update_container_resources(req: $crate::cri::UpdateContainerResourcesRequest) -> (); $($m)*); };
    (@next $st:tt reopen_container_log $($m:ident)*) => { $crate::forward_runtime_backend!(@fn $st reopen_container_log(id: &str) -> (); $($m)*); };
    (@next $st:tt update_runtime_config $($m:ident)*) => { $crate::forward_runtime_backend!(@fn $st update_runtime_config(config: $crate::cri::RuntimeConfig) -> (); $($m)*); };
    (@next $st:tt get_container_events $($m:ident)*) => { $crate::forward_runtime_backend!(@fn $st get_container_events() -> $crate::ContainerEventStream; $($m)*); };
    (@next $st:tt $unknown:ident $($m:ident)*) => {
        ::core::compile_error!(::core::concat!(
            "forward_runtime_backend!: `", ::core::stringify!($unknown), "` is not a RuntimeBackend method"
        ));
    };

    // one forwarded method: the hook around the inner runtime's call
    (@fn { $ty:ty; $s:ident $inner:tt; $name:ident $call:ident $hook:expr; [$($done:tt)*] $own:tt }
        $method:ident($($arg:ident: $t:ty),*) -> $ret:ty; $($m:ident)*
    ) => {
        $crate::forward_runtime_backend!(@next
            { $ty; $s $inner; $name $call $hook; [$($done)*
                async fn $method(&$s, $($arg: $t),*) -> ::core::result::Result<$ret, $crate::RuntimeError> {
                    let $name: &'static str = ::core::stringify!($method);
                    let $call = $s.$inner.$method($($arg),*);
                    $hook
                }
            ] $own }
            $($m)*
        );
    };

    // every forwarded method written: the impl, with the wrapper's own methods
    (@next { $ty:ty; $s:ident $inner:tt; $name:ident $call:ident $hook:expr; [$($done:tt)*] { $($own:tt)* } }) => {
        #[$crate::forward::__async_trait]
        impl $crate::RuntimeBackend for $ty {
            $($done)*
            $($own)*
        }
    };
}

#[doc(hidden)]
pub use async_trait::async_trait as __async_trait;
