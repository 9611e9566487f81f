//! Task events to containerd, in the order they happen: one publisher, one at a time, so an
//! event sent under a process's lock is never overtaken by a later one.

use std::sync::{Mutex, PoisonError};

use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;

/// The shim's publisher.
pub struct Events {
    publisher: Mutex<RemotePublisher>,
    namespace: String,
}

/// One event.
pub enum Event {
    Create(TaskCreate),
    Start(TaskStart),
    ExecAdded(TaskExecAdded),
    ExecStarted(TaskExecStarted),
    Exit(TaskExit),
    Delete(TaskDelete),
    Oom(TaskOOM),
    Paused(TaskPaused),
    Resumed(TaskResumed),
}

impl Event {
    fn topic_and_message(self) -> (&'static str, Box<dyn MessageDyn>) {
        match self {
            Self::Create(e) => (topics::TASK_CREATE_EVENT_TOPIC, Box::new(e)),
            Self::Start(e) => (topics::TASK_START_EVENT_TOPIC, Box::new(e)),
            Self::ExecAdded(e) => (topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(e)),
            Self::ExecStarted(e) => (topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(e)),
            Self::Exit(e) => (topics::TASK_EXIT_EVENT_TOPIC, Box::new(e)),
            Self::Delete(e) => (topics::TASK_DELETE_EVENT_TOPIC, Box::new(e)),
            Self::Oom(e) => (topics::TASK_OOM_EVENT_TOPIC, Box::new(e)),
            Self::Paused(e) => (topics::TASK_PAUSED_EVENT_TOPIC, Box::new(e)),
            Self::Resumed(e) => (topics::TASK_RESUMED_EVENT_TOPIC, Box::new(e)),
        }
    }
}

impl Events {
    /// Events of `namespace` through `publisher`.
    pub fn new(publisher: RemotePublisher, namespace: &str) -> Self {
        Self {
            publisher: Mutex::new(publisher),
            namespace: namespace.to_owned(),
        }
    }

    /// Publishes `event` (a failure is logged: containerd learns the state by asking too).
    pub fn send(&self, event: Event) {
        let (topic, message) = event.topic_and_message();
        let publisher = self
            .publisher
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = publisher.publish(Context::default(), topic, &self.namespace, message) {
            tracing::warn!(topic, error = %e, "cannot publish an event");
        } else {
            tracing::debug!(topic, "event published");
        }
    }
}

/// Now, as protobuf's timestamp.
pub fn now() -> Timestamp {
    timestamp(std::time::SystemTime::now())
}

/// `time` as protobuf's timestamp.
pub fn timestamp(time: std::time::SystemTime) -> Timestamp {
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut t = Timestamp::new();
    t.seconds = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
    t.nanos = i32::try_from(since.subsec_nanos()).unwrap_or(0);
    t
}
