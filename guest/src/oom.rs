//! OOM events for GetOOMEvent: a container's cgroup OOM-kill counter is checked every
//! [`POLL_INTERVAL`] while its init runs, and once more when its init exits (before its exit
//! status is visible), so an OOM kill is queued before WaitProcess reports the exit. Events
//! queue until the host asks; GetOOMEvent waits for one.
//!
//! Polling rather than inotify on `memory.events`: one small read per running container five
//! times a second costs nothing next to the containers, needs no watch descriptors to keep in
//! step with containers coming and going, and works the same on the v1 hierarchy host tests see
//! (whose `memory.oom_control` does not notify).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::cgroup::Cgroup;

pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Events kept for a host that never asks; the oldest go first.
const MAX_QUEUED: usize = 1024;

/// Container ids with an OOM kill not yet reported.
#[derive(Default)]
pub struct OomEvents {
    queue: Mutex<VecDeque<String>>,
    notify: Notify,
}

impl OomEvents {
    pub fn push(&self, cid: &str) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= MAX_QUEUED {
            q.pop_front();
        }
        q.push_back(cid.to_string());
        drop(q);
        self.notify.notify_one();
    }

    fn pop(&self) -> Option<String> {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }

    /// The next event, waiting for one. Cancel-safe: an event is taken only when returned.
    pub async fn next(&self) -> String {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(cid) = self.pop() {
                return cid;
            }
            notified.await;
        }
    }
}

/// One container's counter.
pub struct OomWatch {
    cid: String,
    cgroup: Cgroup,
    seen: AtomicU64,
    events: Arc<OomEvents>,
}

impl OomWatch {
    /// Starts from the counter's current value (kills before the container existed are not
    /// its own).
    pub fn new(cid: &str, cgroup: Cgroup, events: Arc<OomEvents>) -> OomWatch {
        let start = cgroup.oom_kills().unwrap_or(0);
        OomWatch {
            cid: cid.to_string(),
            cgroup,
            seen: AtomicU64::new(start),
            events,
        }
    }

    /// Queues an event if the counter rose since the last check.
    pub fn check(&self) {
        let Some(n) = self.cgroup.oom_kills() else {
            return;
        };
        if self.seen.fetch_max(n, Ordering::SeqCst) < n {
            log::info!("container {}: OOM kill (count {n})", self.cid);
            self.events.push(&self.cid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::Version;

    #[tokio::test]
    async fn counter_rises_queue_events_in_order() {
        let t = tempfile::tempdir().unwrap();
        let ev = Arc::new(OomEvents::default());
        let dir = |c: &str| t.path().join(c);
        let set = |c: &str, n: u64| {
            std::fs::create_dir_all(dir(c)).unwrap();
            std::fs::write(
                dir(c).join("memory.events"),
                format!("oom 0\noom_kill {n}\n"),
            )
            .unwrap();
        };
        set("a", 1);
        set("b", 0);
        let wa = OomWatch::new("a", Cgroup::new(t.path(), "a", Version::V2), ev.clone());
        let wb = OomWatch::new("b", Cgroup::new(t.path(), "b", Version::V2), ev.clone());
        wa.check();
        wb.check();
        assert!(ev.pop().is_none(), "the starting count is no event");
        let waiter = {
            let ev = ev.clone();
            tokio::spawn(async move { ev.next().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        set("b", 1);
        wb.check();
        wb.check();
        assert_eq!(waiter.await.unwrap(), "b");
        set("a", 3);
        set("b", 2);
        wa.check();
        wb.check();
        assert_eq!(ev.next().await, "a");
        assert_eq!(ev.next().await, "b");
        assert!(ev.pop().is_none());
    }
}
