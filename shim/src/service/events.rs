//! The task events the shim publishes to containerd, and the publisher that sends them.

use containerd_shim::api::CreateTaskRequest;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskStart,
};
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;

use super::process::{ExitInfo, Process};

/// One event: its topic and message.
pub struct Event {
    topic: &'static str,
    message: Box<dyn MessageDyn>,
}

impl Event {
    pub fn new(topic: &'static str, message: impl MessageDyn + 'static) -> Self {
        Event {
            topic,
            message: Box::new(message),
        }
    }

    #[cfg(test)]
    pub fn topic(&self) -> &'static str {
        self.topic
    }
}

/// Publishes to containerd in the shim's namespace; a failed publish is logged, never fatal.
pub struct Events {
    publisher: RemotePublisher,
    namespace: String,
}

impl Events {
    pub fn new(publisher: RemotePublisher, namespace: &str) -> Self {
        Events {
            publisher,
            namespace: namespace.to_string(),
        }
    }

    pub async fn publish(&self, event: Event) {
        let Event { topic, message } = event;
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, message)
            .await
        {
            log::warn!("publishing {topic}: {e}");
        }
    }
}

pub fn task_create(req: &CreateTaskRequest, pid: u32) -> Event {
    Event {
        topic: "/tasks/create",
        message: Box::new(TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            checkpoint: req.checkpoint.clone(),
            pid,
            ..Default::default()
        }),
    }
}

/// `/tasks/start` for a container's init, `/tasks/exec-started` for an exec.
pub fn started(p: &Process) -> Event {
    if p.exec_id.is_empty() {
        Event {
            topic: "/tasks/start",
            message: Box::new(TaskStart {
                container_id: p.container_id.clone(),
                pid: p.pid,
                ..Default::default()
            }),
        }
    } else {
        Event {
            topic: "/tasks/exec-started",
            message: Box::new(TaskExecStarted {
                container_id: p.container_id.clone(),
                exec_id: p.exec_id.clone(),
                pid: p.pid,
                ..Default::default()
            }),
        }
    }
}

pub fn exec_added(container_id: &str, exec_id: &str) -> Event {
    Event {
        topic: "/tasks/exec-added",
        message: Box::new(TaskExecAdded {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        }),
    }
}

pub fn exited(p: &Process, exit: &ExitInfo) -> Event {
    Event {
        topic: "/tasks/exit",
        message: Box::new(TaskExit {
            container_id: p.container_id.clone(),
            id: p.event_id().to_string(),
            pid: p.pid,
            exit_status: exit.code,
            exited_at: MessageField::some(exit.at.clone()),
            ..Default::default()
        }),
    }
}

pub fn deleted(p: &Process, exit: &ExitInfo) -> Event {
    Event {
        topic: "/tasks/delete",
        message: Box::new(TaskDelete {
            container_id: p.container_id.clone(),
            pid: p.pid,
            exit_status: exit.code,
            exited_at: MessageField::some(exit.at.clone()),
            id: p.container_id.clone(),
            ..Default::default()
        }),
    }
}
