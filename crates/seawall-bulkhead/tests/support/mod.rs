//! A dependency whose calls finish only when the test says so.

#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use seawall_bulkhead::Priority;
use seawall_core::BoxError;
use tokio::sync::oneshot;
use tower::Service;

/// A request: an id and a class.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub(crate) id: u32,
    pub(crate) priority: Priority,
}

pub(crate) fn job(id: u32, priority: Priority) -> Job {
    Job { id, priority }
}

pub(crate) fn by_class(job: &Job) -> Priority {
    job.priority
}

#[derive(Default)]
struct State {
    started: Vec<u32>,
    pending: HashMap<u32, oneshot::Sender<Result<(), &'static str>>>,
    active: usize,
    max_active: usize,
}

/// Each call starts (recorded in order), then waits for `finish`/`fail`.
#[derive(Clone, Default)]
pub(crate) struct Gate {
    state: Arc<Mutex<State>>,
}

struct Active(Arc<Mutex<State>>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.lock().unwrap().active -= 1;
    }
}

impl Gate {
    pub(crate) fn started(&self) -> Vec<u32> {
        self.state.lock().unwrap().started.clone()
    }

    pub(crate) fn active(&self) -> usize {
        self.state.lock().unwrap().active
    }

    pub(crate) fn max_active(&self) -> usize {
        self.state.lock().unwrap().max_active
    }

    pub(crate) fn finish(&self, id: u32) {
        let tx = self
            .state
            .lock()
            .unwrap()
            .pending
            .remove(&id)
            .expect("call started");
        let _ = tx.send(Ok(()));
    }

    pub(crate) fn fail(&self, id: u32) {
        let tx = self
            .state
            .lock()
            .unwrap()
            .pending
            .remove(&id)
            .expect("call started");
        let _ = tx.send(Err("dependency failed"));
    }
}

impl Service<Job> for Gate {
    type Response = u32;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<u32, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, job: Job) -> Self::Future {
        let (tx, rx) = oneshot::channel();
        {
            let mut s = self.state.lock().unwrap();
            s.started.push(job.id);
            s.pending.insert(job.id, tx);
            s.active += 1;
            s.max_active = s.max_active.max(s.active);
        }
        let active = Active(self.state.clone());
        Box::pin(async move {
            let _active = active;
            match rx.await {
                Ok(Ok(())) => Ok(job.id),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err("gate dropped".into()),
            }
        })
    }
}

/// Lets every spawned task run until it blocks.
pub(crate) async fn run_pending() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}
