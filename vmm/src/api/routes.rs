//! The API's endpoints, in Cloud Hypervisor's shape, as one function of (method, path, body,
//! state) -> response, so that they can be tested without a socket: [`parse`] (no state:
//! the endpoint, the body) then [`apply`] (the VM).
//!
//! | endpoint | method | success | errors |
//! | --- | --- | --- | --- |
//! | `/api/v1/vm.create` | PUT, body: a `VmConfig` ([`vm_config_from_json`]) | 204 | 400 bad body or the VM cannot be built; 409 a VM exists |
//! | `/api/v1/vm.boot` | PUT | 204 | 409 no VM, or not `Created`/`Shutdown`; 400 a shut-down VM cannot be rebuilt; 500 |
//! | `/api/v1/vm.pause` | PUT | 204 | 409 no VM, or not `Running`; 500 vCPUs did not park |
//! | `/api/v1/vm.resume` | PUT | 204 | 409 no VM, or not `Paused` |
//! | `/api/v1/vm.shutdown` | PUT | 204 | 409 no VM, or not `Running`/`Paused` |
//! | `/api/v1/vm.delete` | PUT | 204 (also with no VM) | |
//! | `/api/v1/vm.snapshot` | PUT, body `{"destination_url":"file:///PATH"[,"mode":"paused"]}` | 200 `{"file_bytes", "ram_bytes", "zero_bytes", "paused_ms", "took_ms"}` | 400 bad body; 409 no VM, or not `Running`/`Paused`; 500 the snapshot failed (the VM runs on) |
//! | `/api/v1/vm.snapshot-status` | GET | 200 `{"state":"idle"}` or `{"state":"writing"\|"done", "mode", "destination", "written_bytes", "total_bytes", "elapsed_ms"}` | |
//! | `/api/v1/vm.restore` | PUT, body `{"source_url":"file:///PATH"[,"resume":BOOL]}` | 204, the VM `Paused` (or `Running` with `resume`) | 400 bad body or unusable snapshot; 409 a VM exists |
//! | `/api/v1/vmm.shutdown` | PUT | 204, then keel exits | |
//! | `/api/v1/vm.info` | GET | 200 `{"config", "state", "memory_actual_size"}` | 409 no VM |
//! | `/api/v1/vm.counters` | GET | 200 [`view::json`] | 409 no VM, or never booted |
//! | `/api/v1/vmm.ping` | GET | 200 `{"version", "build_version", "pid", "features"}` | |
//!
//! Any other path is 404; another method on a known path is 405 with `Allow`. Every error
//! carries, as Cloud Hypervisor's errors do, a JSON array of one-line strings: the error chain,
//! outermost first (`["the VM config is refused", "net: net devices ..."]`). A request that
//! does not fit the VM's state is 409 Conflict, and so is one that needs a VM when there is
//! none (404 is kept for paths Keel does not serve). States are spelled as Cloud Hypervisor spells them: `Created`, `Running`,
//! `Paused`, `Shutdown` (the guest powered off or reset, or `vm.shutdown`). `vm.boot` of a VM in
//! `Shutdown` builds it afresh from its config and boots it, as Cloud Hypervisor allows. Bodies
//! of endpoints other than `vm.create` are ignored.

mod snapshot;

use std::os::fd::RawFd;
use std::time::Duration;

use super::http::Response;
use crate::config::VmConfig;
use crate::config::{vm_config_from_json, vm_config_to_json, JsonConfigError};
use crate::handle::{HandleError, VmHandle, VmState};
use crate::stats::{view, VmCounters};
use crate::vm::VmError;

/// Every endpoint served, as (method, path).
pub const ENDPOINTS: &[(&str, &str)] = &[
    ("PUT", "/api/v1/vm.create"),
    ("PUT", "/api/v1/vm.boot"),
    ("PUT", "/api/v1/vm.pause"),
    ("PUT", "/api/v1/vm.resume"),
    ("PUT", "/api/v1/vm.shutdown"),
    ("PUT", "/api/v1/vm.delete"),
    ("PUT", "/api/v1/vm.snapshot"),
    ("PUT", "/api/v1/vm.restore"),
    ("GET", "/api/v1/vm.snapshot-status"),
    ("PUT", "/api/v1/vmm.shutdown"),
    ("GET", "/api/v1/vm.info"),
    ("GET", "/api/v1/vm.counters"),
    ("GET", "/api/v1/vmm.ping"),
];

/// Why a request was refused; [`RouteError::status`] is its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// No such endpoint.
    #[error("no endpoint {0}")]
    NotFound(String),
    /// The endpoint exists, with another method.
    #[error("{path} takes {allow}, not {method}")]
    Method {
        /// The path asked for.
        path: String,
        /// The method used.
        method: String,
        /// The method the endpoint takes.
        allow: &'static str,
    },
    /// The body is not a VM config Keel accepts.
    #[error("the VM config is refused")]
    Config(#[from] JsonConfigError),
    /// The body does not fit the endpoint (a field, a URL), said by the parser.
    #[error("{0}")]
    Request(String),
    /// The body is unusable for another reason (missing, not UTF-8).
    #[error("{0}")]
    Body(&'static str),
    /// The VM could not be built from its config on this host.
    #[error("cannot build the VM")]
    Build(#[source] HandleError),
    /// The request does not fit the VM's state.
    #[error("{0}")]
    Conflict(String),
    /// The VM failed to do what was asked.
    #[error("cannot {action} the VM")]
    Internal {
        /// What was asked (`boot`, `pause`, ...).
        action: &'static str,
        /// Why it failed.
        #[source]
        source: VmError,
    },
    /// The snapshot could not be taken (the VM runs on).
    #[error("cannot take the snapshot")]
    Snapshot(#[source] crate::vm::SnapshotError),
}

impl RouteError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            RouteError::NotFound(_) => 404,
            RouteError::Method { .. } => 405,
            RouteError::Config(_)
            | RouteError::Body(_)
            | RouteError::Request(_)
            | RouteError::Build(_) => 400,
            RouteError::Conflict(_) => 409,
            RouteError::Internal { .. } | RouteError::Snapshot(_) => 500,
        }
    }
}

/// What the server does with a request: answer it, and maybe exit afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The response to send.
    pub response: Response,
    /// `vmm.shutdown`: stop serving once the response is out.
    pub exit: bool,
}

/// A VM the API created (or was handed), with the config it was built from.
struct ManagedVm {
    config: VmConfig,
    /// `None` only after a shut-down VM failed to be rebuilt by `vm.boot`.
    handle: Option<VmHandle>,
    /// Whether its end has been logged.
    ended: bool,
}

/// The VM the API serves (at most one), owned by the server thread.
#[derive(Default)]
pub struct ApiState {
    vm: Option<ManagedVm>,
    /// The last snapshot begun, for `vm.snapshot-status` (and to refuse a second one while
    /// it is written).
    snapshot: Option<std::sync::Arc<crate::vm::SnapshotProgress>>,
}

/// The state as Cloud Hypervisor spells it.
pub fn state_name(state: VmState) -> &'static str {
    match state {
        VmState::Created => "Created",
        VmState::Running => "Running",
        VmState::Paused => "Paused",
        VmState::Stopped => "Shutdown",
    }
}

/// `err` and its sources, joined with ": ", on one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    error_messages(err).join(": ")
}

/// `err`'s message and each of its sources', outermost first, each on one line: the body of
/// an error answer.
pub fn error_messages(err: &dyn std::error::Error) -> Vec<String> {
    let mut messages = vec![one_line(&err.to_string())];
    let mut source = err.source();
    while let Some(cause) = source {
        messages.push(one_line(&cause.to_string()));
        source = cause.source();
    }
    messages
}

fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn no_vm() -> RouteError {
    RouteError::Conflict("no VM has been created (PUT /api/v1/vm.create first)".into())
}

/// The refusal of `action` for a [`VmHandle`] error.
fn from_handle(action: &'static str) -> impl FnOnce(HandleError) -> RouteError {
    move |err| match err {
        HandleError::WrongState { action, state } => RouteError::Conflict(format!(
            "cannot {action} a VM that is {}",
            state_name(state)
        )),
        HandleError::Vm(source) => RouteError::Internal { action, source },
        HandleError::Snapshot(source) => RouteError::Snapshot(source),
    }
}

impl ApiState {
    /// No VM yet: the API waits for `vm.create`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `handle`, built from `config` (for `keel --api-socket --kernel ...`). A VM
    /// already served is shut down and replaced.
    pub fn adopt(&mut self, config: VmConfig, handle: VmHandle) {
        self.stop_vm();
        self.vm = Some(ManagedVm {
            config,
            handle: Some(handle),
            ended: false,
        });
    }

    /// Notices a guest that powered off or reset since the last call (logging it once).
    pub fn refresh(&mut self) {
        let Some(vm) = &mut self.vm else { return };
        let Some(handle) = &mut vm.handle else { return };
        if vm.ended {
            return;
        }
        if let Some(outcome) = handle.wait_timeout(Duration::ZERO) {
            log::info!("api: the VM ended: {outcome:?}; serving until vmm.shutdown");
            vm.ended = true;
        }
    }

    /// While a served VM runs, the eventfd that becomes readable when it ends.
    pub fn end_fd(&self) -> Option<RawFd> {
        self.vm.as_ref()?.handle.as_ref()?.end_fd()
    }

    /// The VM's state, if there is a VM.
    pub fn vm_state(&mut self) -> Option<VmState> {
        self.refresh();
        let vm = self.vm.as_mut()?;
        Some(vm.handle.as_mut().map_or(VmState::Stopped, VmHandle::state))
    }

    /// The VM's counters, once booted.
    pub fn counters(&self) -> Option<VmCounters> {
        self.vm.as_ref()?.handle.as_ref()?.counters()
    }

    /// Stops the VM's vCPUs if it runs (or is paused); the VM and its counters stay.
    pub fn stop_vm(&mut self) {
        if let Some(handle) = self.vm.as_mut().and_then(|vm| vm.handle.as_mut()) {
            if matches!(handle.state(), VmState::Running | VmState::Paused) {
                if let Err(e) = handle.shutdown() {
                    log::warn!("api: stopping the VM: {}", error_chain(&e));
                }
            }
        }
    }

    fn vm(&mut self) -> Result<&mut ManagedVm, RouteError> {
        self.vm.as_mut().ok_or_else(no_vm)
    }

    fn handle(&mut self) -> Result<&mut VmHandle, RouteError> {
        self.vm()?.handle.as_mut().ok_or_else(|| {
            RouteError::Conflict("the VM is Shutdown; PUT /api/v1/vm.boot rebuilds it".into())
        })
    }
}

/// A request resolved to its endpoint, with `vm.create`'s body parsed: all [`apply`] needs
/// besides the state. [`parse`] makes it without the state, so that what a client sends is
/// parsed on its connection's thread (under that thread's seccomp filter), not on the thread
/// that owns the VM.
#[derive(Debug)]
pub enum Call {
    /// `vm.create`, with its body parsed; a bad body is reported after the state's checks
    /// (an existing VM is a conflict whatever the body).
    Create(Result<Box<VmConfig>, RouteError>),
    /// `vm.boot`.
    Boot,
    /// `vm.pause`.
    Pause,
    /// `vm.resume`.
    Resume,
    /// `vm.shutdown`.
    Shutdown,
    /// `vm.delete`.
    Delete,
    /// `vm.snapshot`, with its body parsed (refused after the state's checks).
    Snapshot(Result<snapshot::SnapshotRequest, RouteError>),
    /// `vm.restore`, with its body parsed (refused after the state's checks).
    Restore(Result<snapshot::RestoreRequest, RouteError>),
    /// `vm.snapshot-status`.
    SnapshotStatus,
    /// `vmm.shutdown`.
    VmmShutdown,
    /// `vm.info`.
    Info,
    /// `vm.counters`.
    Counters,
    /// `vmm.ping`.
    Ping,
}

/// Resolves a request to its endpoint (404, 405 otherwise) and parses its body. `path`
/// carries no query string; `body` is the whole body (ignored but by `vm.create`).
pub fn parse(method: &str, path: &str, body: &[u8]) -> Result<Call, RouteError> {
    let Some(&(allow, _)) = ENDPOINTS.iter().find(|(_, p)| *p == path) else {
        return Err(RouteError::NotFound(path.to_string()));
    };
    if method != allow {
        return Err(RouteError::Method {
            path: path.to_string(),
            method: method.to_string(),
            allow,
        });
    }
    Ok(match path.trim_start_matches("/api/v1/") {
        "vm.create" => Call::Create(config_from_body(body).map(Box::new)),
        "vm.boot" => Call::Boot,
        "vm.pause" => Call::Pause,
        "vm.resume" => Call::Resume,
        "vm.shutdown" => Call::Shutdown,
        "vm.delete" => Call::Delete,
        "vm.snapshot" => Call::Snapshot(snapshot::parse_snapshot(body)),
        "vm.restore" => Call::Restore(snapshot::parse_restore(body)),
        "vm.snapshot-status" => Call::SnapshotStatus,
        "vmm.shutdown" => Call::VmmShutdown,
        "vm.info" => Call::Info,
        "vm.counters" => Call::Counters,
        "vmm.ping" => Call::Ping,
        _ => return Err(RouteError::NotFound(path.to_string())),
    })
}

/// What the server does with a request.
pub enum Outcome {
    /// Answer it now.
    Now(Reply),
    /// Answer it once this work, run on a thread of its own, is done (a live snapshot's RAM
    /// being written while the server goes on serving, `vm.snapshot-status` among others).
    Later(Box<dyn FnOnce() -> Reply + Send>),
}

impl Outcome {
    /// The reply, doing the work left here if there is some.
    pub fn wait(self) -> Reply {
        match self {
            Outcome::Now(reply) => reply,
            Outcome::Later(work) => work(),
        }
    }
}

/// Carries out `call` on the VM in `state`.
pub fn apply(call: Call, state: &mut ApiState) -> Outcome {
    state.refresh();
    if let Call::Snapshot(request) = call {
        return match snapshot::begin(request, state) {
            Ok(job) => Outcome::Later(Box::new(move || reply(snapshot::finish(job), false))),
            Err(e) => Outcome::Now(reply(Err(e), false)),
        };
    }
    let exit = matches!(call, Call::VmmShutdown);
    Outcome::Now(reply(route(call, state), exit))
}

/// Answers one request: [`parse`], then [`apply`] (and any work left, here).
pub fn handle(method: &str, path: &str, body: &[u8], state: &mut ApiState) -> Reply {
    match parse(method, path, body) {
        Ok(call) => apply(call, state).wait(),
        Err(e) => refused(e),
    }
}

/// The reply to a refused request.
pub fn refused(err: RouteError) -> Reply {
    reply(Err(err), false)
}

/// 200 with `Ok(Some(json))`, 204 with `Ok(None)`, the error's status otherwise; `exit` holds
/// only on success.
fn reply(result: Result<Option<String>, RouteError>, exit: bool) -> Reply {
    let exit = exit && result.is_ok();
    let response = match result {
        Ok(Some(json)) => Response {
            status: 200,
            body: Some(json),
            allow: None,
        },
        Ok(None) => Response {
            status: 204,
            body: None,
            allow: None,
        },
        Err(e) => Response {
            allow: match e {
                RouteError::Method { allow, .. } => Some(allow),
                _ => None,
            },
            ..Response::error(e.status(), error_messages(&e))
        },
    };
    Reply { response, exit }
}

/// `Ok(Some(json))`: 200 with a body; `Ok(None)`: 204.
fn route(call: Call, state: &mut ApiState) -> Result<Option<String>, RouteError> {
    match call {
        Call::Create(config) => create(config, state).map(|()| None),
        Call::Boot => boot(state).map(|()| None),
        Call::Pause => state
            .handle()?
            .pause()
            .map_err(from_handle("pause"))
            .map(|()| None),
        Call::Resume => state
            .handle()?
            .resume()
            .map_err(from_handle("resume"))
            .map(|()| None),
        Call::Shutdown => state
            .handle()?
            .shutdown()
            .map_err(from_handle("shut down"))
            .map(|_| None),
        Call::Delete => {
            state.stop_vm();
            state.vm = None;
            Ok(None)
        }
        Call::Snapshot(request) => snapshot::begin(request, state).and_then(snapshot::finish),
        Call::Restore(request) => snapshot::restore(request, state).map(|()| None),
        Call::SnapshotStatus => Ok(Some(snapshot::status(state))),
        Call::VmmShutdown => Ok(None),
        Call::Info => info(state).map(Some),
        Call::Counters => {
            let counters = state.handle()?.counters().ok_or_else(|| {
                RouteError::Conflict("the VM has not been booted: no counters yet".into())
            })?;
            Ok(Some(view::json(&counters)))
        }
        Call::Ping => Ok(Some(ping())),
    }
}

/// `vm.create`'s body as a `VmConfig`.
fn config_from_body(body: &[u8]) -> Result<VmConfig, RouteError> {
    let text = std::str::from_utf8(body).map_err(|_| RouteError::Body("body is not UTF-8"))?;
    if text.trim().is_empty() {
        return Err(RouteError::Body(
            "vm.create needs a VmConfig JSON body (at least {\"payload\":{\"kernel\":...}})",
        ));
    }
    Ok(vm_config_from_json(text)?)
}

/// 409 if there is a VM already (`vm.create` and `vm.restore` need none).
fn refuse_existing(state: &mut ApiState) -> Result<(), RouteError> {
    match state.vm_state() {
        Some(s) => Err(RouteError::Conflict(format!(
            "a VM already exists (state {}); PUT /api/v1/vm.delete first",
            state_name(s)
        ))),
        None => Ok(()),
    }
}

fn create(
    config: Result<Box<VmConfig>, RouteError>,
    state: &mut ApiState,
) -> Result<(), RouteError> {
    refuse_existing(state)?;
    let config = *config?;
    let handle = VmHandle::create(&config).map_err(RouteError::Build)?;
    state.vm = Some(ManagedVm {
        config,
        handle: Some(handle),
        ended: false,
    });
    Ok(())
}

fn boot(state: &mut ApiState) -> Result<(), RouteError> {
    let current = state.vm_state().ok_or_else(no_vm)?;
    let vm = state.vm()?;
    if current == VmState::Stopped {
        // As Cloud Hypervisor: a shut-down VM boots again, rebuilt from its config. The old
        // one goes first, so that its memory (huge pages above all) is free for the new one.
        vm.handle = None;
        let handle = VmHandle::create(&vm.config).map_err(RouteError::Build)?;
        vm.handle = Some(handle);
        vm.ended = false;
    }
    state.handle()?.boot().map_err(from_handle("boot"))
}

fn info(state: &mut ApiState) -> Result<String, RouteError> {
    let current = state.vm_state().ok_or_else(no_vm)?;
    let vm = state.vm()?;
    Ok(format!(
        "{{\"config\":{},\"state\":\"{}\",\"memory_actual_size\":{}}}",
        vm_config_to_json(&vm.config),
        state_name(current),
        vm.config.memory.size
    ))
}

fn ping() -> String {
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "build_version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "features": [],
    })
    .to_string()
}

#[cfg(test)]
mod tests;
