//! The task service: each call of containerd's task API v2 done as runc's shim does it, or
//! refused with a reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest,
    PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest,
    WaitRequest, WaitResponse,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskIO, TaskPaused, TaskResumed,
};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::shim::shim::CheckpointTaskRequest;
use containerd_shim::protos::shim_sync::Task;
use containerd_shim::protos::ttrpc::{self, Code, TtrpcContext};
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::{ExitSignal, TtrpcResult};
use moat_runtime::sandbox::control::{Reply, Request};

use super::events::{Event, Events};
use super::process::{Phase, Process};
use super::rootfs::Mount;
use super::stdio::{self, Paths};
use super::task::{self, Container};
use super::{member, metrics};
use crate::oci::Globals;

pub use task::clean_up;

/// The shim's task service.
pub struct Service {
    globals: Globals,
    events: Arc<Events>,
    exit: Arc<ExitSignal>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
}

/// A ttrpc error with `code`.
fn status(code: Code, message: impl std::fmt::Display) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.to_string()))
}

/// An operation's failure as containerd's errors: one line, the cause included.
fn failed(e: anyhow::Error) -> ttrpc::Error {
    let message = crate::one_line(&format!("{e:#}"));
    tracing::warn!("{message}");
    status(Code::FAILED_PRECONDITION, message)
}

fn not_found(what: &str) -> ttrpc::Error {
    status(Code::NOT_FOUND, format!("{what}: not found"))
}

impl Service {
    /// The service of the containers in `globals`' root.
    pub fn new(globals: Globals, events: Events, exit: Arc<ExitSignal>) -> Self {
        Self {
            globals,
            events: Arc::new(events),
            exit,
            containers: Mutex::new(HashMap::new()),
        }
    }

    fn containers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn container(&self, id: &str) -> TtrpcResult<Arc<Container>> {
        self.containers()
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(&format!("container {id}")))
    }

    fn process(&self, id: &str, exec_id: &str) -> TtrpcResult<(Arc<Container>, Arc<Process>)> {
        let c = self.container(id)?;
        let p = c
            .process(exec_id)
            .ok_or_else(|| not_found(&format!("process {exec_id} of {id}")))?;
        Ok((c, p))
    }

    /// `Pause` (`frozen`) or `Resume` of container `id`, and its event.
    fn freeze(&self, id: &str, frozen: bool) -> TtrpcResult<Empty> {
        let c = self.container(id)?;
        let mut life = c.init.life();
        let (from, to, request, state) = if frozen {
            (Phase::Running, Phase::Paused, Request::Pause, "running")
        } else {
            (Phase::Paused, Phase::Running, Request::Resume, "paused")
        };
        if life.phase != from {
            let message = format!("the container is not {state}");
            return Err(status(Code::FAILED_PRECONDITION, message));
        }
        c.request(&request).map_err(failed)?;
        life.phase = to;
        let event = if frozen {
            let mut paused = TaskPaused::new();
            paused.container_id = id.to_owned();
            Event::Paused(paused)
        } else {
            let mut resumed = TaskResumed::new();
            resumed.container_id = id.to_owned();
            Event::Resumed(resumed)
        };
        self.events.send(event);
        Ok(Empty::new())
    }

    fn namespace(&self) -> String {
        self.globals
            .root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

fn mounts(req: &CreateTaskRequest) -> Vec<Mount> {
    req.rootfs
        .iter()
        .map(|m| Mount {
            kind: m.type_.clone(),
            source: m.source.clone(),
            options: m.options.clone(),
        })
        .collect()
}

fn json_any<T: for<'de> serde::Deserialize<'de>>(
    any: &MessageField<containerd_shim::protos::protobuf::well_known_types::any::Any>,
    what: &str,
) -> TtrpcResult<T> {
    let value = any.as_ref().map(|a| a.value.as_slice()).unwrap_or(b"{}");
    serde_json::from_slice(value)
        .map_err(|e| status(Code::INVALID_ARGUMENT, format!("malformed {what}: {e}")))
}

impl Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(status(
                Code::UNIMPLEMENTED,
                "checkpoint/restore: a container's memory is its VM's (moat has no CRIU)",
            ));
        }
        if self.containers().contains_key(&req.id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("container {}", req.id),
            ));
        }
        let paths = Paths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let bundle = std::path::PathBuf::from(&req.bundle);
        let spec = task::Spec {
            id: &req.id,
            bundle: &bundle,
            mounts: &mounts(&req),
            paths,
            namespace: &self.namespace(),
            options: req
                .options
                .as_ref()
                .map(|a| (a.type_url.as_str(), a.value.as_slice())),
        };
        let bundle_spec = task::read_spec(&bundle).map_err(failed)?;
        let c = match member::sandbox_of(&bundle_spec) {
            Some(sandbox) => {
                let sandbox = self.containers().get(&sandbox).cloned().ok_or_else(|| {
                    status(
                        Code::FAILED_PRECONDITION,
                        format!("pod sandbox {sandbox} is not served by this shim"),
                    )
                })?;
                member::create(&self.globals, &spec, &self.events, &sandbox)
            }
            None => task::create(&self.globals, &spec, &self.events),
        }
        .map_err(failed)?;
        let pid = c.pid;
        let mut io = TaskIO::new();
        io.stdin = req.stdin.clone();
        io.stdout = req.stdout.clone();
        io.stderr = req.stderr.clone();
        io.terminal = req.terminal;
        let mut created = TaskCreate::new();
        created.container_id = req.id.clone();
        created.bundle = req.bundle.clone();
        created.rootfs = req.rootfs.clone();
        created.io = Some(io).into();
        created.pid = pid;
        self.containers().insert(req.id.clone(), Arc::new(c));
        self.events.send(Event::Create(created));
        let mut response = CreateTaskResponse::new();
        response.pid = pid;
        Ok(response)
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        let pid = if req.exec_id.is_empty() {
            c.start(&self.events)
        } else {
            c.start_exec(&p, &self.events)
        }
        .map_err(failed)?;
        let mut response = StartResponse::new();
        response.pid = pid;
        Ok(response)
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        if matches!(p.life().phase, Phase::Running | Phase::Paused) {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("cannot delete a running process ({})", req.id),
            ));
        }
        if req.exec_id.is_empty() {
            c.remove(&self.globals).map_err(failed)?;
            self.containers().remove(&req.id);
        } else {
            c.execs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&req.exec_id);
        }
        let (status, at) = p.life().exit.clone().unwrap_or_default();
        if req.exec_id.is_empty() {
            let mut deleted = TaskDelete::new();
            deleted.container_id = req.id.clone();
            deleted.id = req.id.clone();
            deleted.pid = c.pid;
            deleted.exit_status = status;
            deleted.exited_at = Some(at.clone()).into();
            self.events.send(Event::Delete(deleted));
        }
        let mut response = DeleteResponse::new();
        response.pid = c.pid;
        response.exit_status = status;
        response.exited_at = Some(at).into();
        Ok(response)
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let c = self.container(&req.id)?;
        let Reply::Processes { pids } = c.request(&Request::Processes).map_err(failed)? else {
            return Err(status(
                Code::INTERNAL,
                "no process list from the supervisor",
            ));
        };
        let mut response = PidsResponse::new();
        response.processes = pids
            .into_iter()
            .map(|pid| {
                let mut info = ProcessInfo::new();
                info.pid = pid as u32;
                info
            })
            .collect();
        Ok(response)
    }

    fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        self.freeze(&req.id, true)
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        self.freeze(&req.id, false)
    }

    fn checkpoint(&self, _ctx: &TtrpcContext, _req: CheckpointTaskRequest) -> TtrpcResult<Empty> {
        Err(status(
            Code::UNIMPLEMENTED,
            "checkpoint: a container's memory is its VM's (moat has no CRIU)",
        ))
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        if p.life().phase == Phase::Stopped {
            return Err(not_found("process already finished"));
        }
        let signo = i32::try_from(req.signal).unwrap_or(0);
        if req.exec_id.is_empty() {
            let all = req.all;
            c.request(&Request::Signal { signo, all }).map_err(failed)?;
        } else {
            p.send(&Request::Signal { signo, all: false })
                .map_err(failed)?;
        }
        Ok(Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let c = self.container(&req.id)?;
        if c.init.life().phase != Phase::Running {
            return Err(status(
                Code::FAILED_PRECONDITION,
                "the container is not running",
            ));
        }
        let spec: oci_spec::runtime::Process = json_any(&req.spec, "process spec")?;
        let paths = Paths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let opened = stdio::open(&paths, &self.namespace(), &req.id).map_err(failed)?;
        let mut execs = c.execs.lock().unwrap_or_else(PoisonError::into_inner);
        if execs.contains_key(&req.exec_id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("exec {}", req.exec_id),
            ));
        }
        let closer = opened.closer.clone();
        let proc = Arc::new(Process::new(&req.exec_id, paths, closer));
        {
            let mut life = proc.life();
            life.stdio = Some(opened);
            life.spec = Some(Box::new(spec));
        }
        execs.insert(req.exec_id.clone(), proc);
        let mut added = TaskExecAdded::new();
        added.container_id = req.id;
        added.exec_id = req.exec_id;
        self.events.send(Event::ExecAdded(added));
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let (_, p) = self.process(&req.id, &req.exec_id)?;
        let rows = u16::try_from(req.height).unwrap_or(u16::MAX);
        let cols = u16::try_from(req.width).unwrap_or(u16::MAX);
        p.send(&Request::Resize { rows, cols }).map_err(failed)?;
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let (_, p) = self.process(&req.id, &req.exec_id)?;
        if req.stdin {
            p.close_stdin();
        }
        Ok(Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let c = self.container(&req.id)?;
        let resources: oci_spec::runtime::LinuxResources = json_any(&req.resources, "resources")?;
        c.request(&Request::Update(Box::new(resources)))
            .map_err(failed)?;
        Ok(Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let (_, p) = self.process(&req.id, &req.exec_id)?;
        let (status, at) = p.wait();
        let mut response = WaitResponse::new();
        response.exit_status = status;
        response.exited_at = Some(at).into();
        Ok(response)
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let c = self.container(&req.id)?;
        let Reply::Stats(stats) = c.request(&Request::Stats).map_err(failed)? else {
            return Err(status(Code::INTERNAL, "no counters from the supervisor"));
        };
        let mut any = containerd_shim::protos::protobuf::well_known_types::any::Any::new();
        any.type_url = metrics::TYPE_URL.to_owned();
        any.value = metrics::encode(&stats);
        let mut response = StatsResponse::new();
        response.stats = Some(any).into();
        Ok(response)
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let c = self.container(&req.id)?;
        let mut response = ConnectResponse::new();
        response.shim_pid = std::process::id();
        response.task_pid = c.pid;
        response.version = crate::version();
        Ok(response)
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        if self.containers().is_empty() {
            self.exit.signal();
        }
        Ok(Empty::new())
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        let mut response = StateResponse::new();
        response.id = req.id.clone();
        response.exec_id = req.exec_id.clone();
        response.bundle = c.bundle.display().to_string();
        response.pid = c.pid;
        response.status = p.status().into();
        response.stdin = p.paths.stdin.clone();
        response.stdout = p.paths.stdout.clone();
        response.stderr = p.paths.stderr.clone();
        response.terminal = p.paths.terminal;
        if let Some((status, at)) = p.life().exit.clone() {
            response.exit_status = status;
            response.exited_at = Some(at).into();
        }
        Ok(response)
    }
}
