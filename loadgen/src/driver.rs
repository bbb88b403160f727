//! What one loadgen thread runs on its glommio executor: its connections (each shared by
//! `pipeline_depth` workers, reconnected with backoff when broken), the workers that send
//! requests closed-loop or at their open-loop intended times, and the recorder that keeps
//! this thread's latencies and errors and hands an interval of them to the main thread
//! once a second.
//!
//! Owns everything of one thread; it shares nothing with other threads but the channels it
//! is given. It never prints and never decides what the run reports (`run` does).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_lite::future;

use crate::histograms::{merge, new_latency_histogram, record_latency, LatencyHistogram};
use crate::schedule::{OpenLoopSchedule, Pace};
use crate::target::{OpError, Outcome, TargetConnection, TargetSpec};
use crate::workload::{value_pattern, write_key, OpKind, OpPicker, Workload};

/// Backoff before the first reconnect of a broken connection; it doubles up to the max and
/// returns to this after a request succeeds.
pub const RECONNECT_BACKOFF_MS_MIN: u64 = 10;
pub const RECONNECT_BACKOFF_MS_MAX: u64 = 1000;
/// How often progress and interval-log histograms are taken.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// What this thread is to do in one phase.
#[derive(Clone)]
pub struct ThreadTask {
    pub thread_index: usize,
    pub target: TargetSpec,
    pub workload: Workload,
    pub connections: usize,
    pub pipeline_depth: usize,
    /// Workers in the whole run (every thread's), for open-loop spacing.
    pub workers_total: u64,
    pub phase: PhaseTask,
    pub request_timeout: Duration,
    pub seed: u64,
}

#[derive(Clone)]
pub enum PhaseTask {
    /// Write keys `first..end` once each, as fast as the server takes them.
    Preload {
        first: u64,
        end: u64,
        time_limit: Duration,
    },
    /// The measured run.
    Measure {
        pace: Pace,
        duration: Duration,
        /// This thread's share of the run's request bound.
        requests_max: Option<u64>,
    },
}

/// One interval of one thread, sent to the main thread.
pub struct IntervalSample {
    pub thread_index: usize,
    pub index: u64,
    pub start_offset: Duration,
    pub duration: Duration,
    /// Indexed by `OpKind::index`.
    pub latencies: [LatencyHistogram; 2],
    pub errors: u64,
}

/// Everything a thread measured in a phase.
pub struct ThreadTotals {
    pub latencies: [LatencyHistogram; 2],
    pub hits: u64,
    pub misses: u64,
    pub errors: BTreeMap<String, u64>,
    /// Open loop: requests whose intended time came before the end but that were never sent
    /// (the server, or the connection to it, held the worker until the end).
    pub unsent: u64,
    /// When the last worker of the thread stopped.
    pub finished_at: Instant,
    /// Preload: keys written.
    pub keys_written: u64,
}

/// Messages from a thread to the main thread.
pub enum ThreadEvent {
    /// Connections are up (or tried): ready to start.
    Ready(usize),
    Interval(Box<IntervalSample>),
    /// The thread could not start its executor.
    Failed(usize),
}

/// The thread's body: connect, report ready, wait for the start, run the phase.
pub async fn run_thread(
    task: ThreadTask,
    events: mpsc::Sender<ThreadEvent>,
    start: mpsc::Receiver<Option<Instant>>,
) -> ThreadTotals {
    let recorder = Rc::new(Recorder::new());
    let spec = Rc::new(task.target.clone());
    let slots: Vec<Rc<ConnectionSlot>> = (0..task.connections.max(1))
        .map(|_| Rc::new(ConnectionSlot::new()))
        .collect();
    // Connect every slot before the start, each bounded by the connect timeout.
    let connect_by = Instant::now() + task.target.connect_timeout;
    let connecting: Vec<_> = slots
        .iter()
        .map(|slot| {
            let (slot, spec, recorder) = (slot.clone(), spec.clone(), recorder.clone());
            glommio::spawn_local(
                async move { slot.connect_once(&spec, &recorder, connect_by).await },
            )
        })
        .collect();
    for handle in connecting {
        handle.await;
    }
    let _ = events.send(ThreadEvent::Ready(task.thread_index));
    // The main thread answers once every thread is ready; `None` (or silence) calls it off.
    let start = match start.recv_timeout(Duration::from_secs(600)) {
        Ok(Some(start)) => start,
        _ => return recorder.into_totals(Instant::now()),
    };
    wait_until(start).await;
    let finished_at = match task.phase.clone() {
        PhaseTask::Preload {
            first,
            end,
            time_limit,
        } => {
            preload(
                &task,
                &slots,
                &spec,
                &recorder,
                start,
                first..end,
                time_limit,
            )
            .await
        }
        PhaseTask::Measure {
            pace,
            duration,
            requests_max,
        } => {
            measure(
                &task,
                &slots,
                &spec,
                &recorder,
                start,
                pace,
                duration,
                requests_max,
                &events,
            )
            .await
        }
    };
    for slot in &slots {
        slot.close();
    }
    recorder.into_totals(finished_at)
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    task: &ThreadTask,
    slots: &[Rc<ConnectionSlot>],
    spec: &Rc<TargetSpec>,
    recorder: &Rc<Recorder>,
    start: Instant,
    pace: Pace,
    duration: Duration,
    requests_max: Option<u64>,
    events: &mpsc::Sender<ThreadEvent>,
) -> Instant {
    let deadline = start + duration;
    let tokens = Rc::new(Cell::new(requests_max.unwrap_or(u64::MAX)));
    let next_interval = Rc::new(Cell::new(0u64));
    let done = Rc::new(Cell::new(false));
    glommio::spawn_local(tick_intervals(
        task.thread_index,
        recorder.clone(),
        events.clone(),
        start,
        next_interval.clone(),
        done.clone(),
    ))
    .detach();
    let value = Rc::new(value_pattern(task.workload.value_size.max_bytes));
    let mut workers = Vec::new();
    for (c, slot) in slots.iter().enumerate() {
        for d in 0..task.pipeline_depth.max(1) {
            let local_index = (c * task.pipeline_depth.max(1) + d) as u64;
            let worker_index = task.thread_index as u64 * workers_per_thread(task) + local_index;
            let schedule = match pace {
                Pace::Closed => None,
                Pace::Open { rate_per_second } => Some(OpenLoopSchedule::new(
                    rate_per_second,
                    task.workers_total,
                    worker_index,
                )),
            };
            let worker = Worker {
                slot: slot.clone(),
                spec: spec.clone(),
                recorder: recorder.clone(),
                picker: OpPicker::new(
                    &task.workload,
                    task.seed ^ worker_index.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                ),
                workload: task.workload.clone(),
                value: value.clone(),
                request_timeout: task.request_timeout,
            };
            workers.push(glommio::spawn_local(worker.measure(
                start,
                deadline,
                schedule,
                tokens.clone(),
            )));
        }
    }
    for worker in workers {
        worker.await;
    }
    let finished_at = Instant::now();
    done.set(true);
    // The last, partial interval.
    let index = next_interval.get();
    let start_offset = INTERVAL * index as u32;
    let _ = events.send(ThreadEvent::Interval(Box::new(recorder.take_interval(
        task.thread_index,
        index,
        start_offset,
        finished_at.saturating_duration_since(start + start_offset),
    ))));
    finished_at
}

fn workers_per_thread(task: &ThreadTask) -> u64 {
    (task.connections.max(1) * task.pipeline_depth.max(1)) as u64
}

async fn preload(
    task: &ThreadTask,
    slots: &[Rc<ConnectionSlot>],
    spec: &Rc<TargetSpec>,
    recorder: &Rc<Recorder>,
    start: Instant,
    keys: std::ops::Range<u64>,
    time_limit: Duration,
) -> Instant {
    let deadline = start + time_limit;
    let next_key = Rc::new(Cell::new(keys.start));
    let value = Rc::new(value_pattern(task.workload.value_size.max_bytes));
    let mut workers = Vec::new();
    for (c, slot) in slots.iter().enumerate() {
        for d in 0..task.pipeline_depth.max(1) {
            let worker = Worker {
                slot: slot.clone(),
                spec: spec.clone(),
                recorder: recorder.clone(),
                picker: OpPicker::new(&task.workload, task.seed ^ ((c as u64) << 32 | d as u64)),
                workload: task.workload.clone(),
                value: value.clone(),
                request_timeout: task.request_timeout,
            };
            workers.push(glommio::spawn_local(worker.preload(
                deadline,
                next_key.clone(),
                keys.end,
            )));
        }
    }
    for worker in workers {
        worker.await;
    }
    Instant::now()
}

/// Once a second, hands the interval's histograms to the main thread.
async fn tick_intervals(
    thread_index: usize,
    recorder: Rc<Recorder>,
    events: mpsc::Sender<ThreadEvent>,
    start: Instant,
    next_interval: Rc<Cell<u64>>,
    done: Rc<Cell<bool>>,
) {
    loop {
        let index = next_interval.get();
        wait_until(start + INTERVAL * (index as u32 + 1)).await;
        if done.get() {
            return;
        }
        next_interval.set(index + 1);
        let sample = recorder.take_interval(thread_index, index, INTERVAL * index as u32, INTERVAL);
        if events
            .send(ThreadEvent::Interval(Box::new(sample)))
            .is_err()
        {
            return;
        }
    }
}

struct Worker {
    slot: Rc<ConnectionSlot>,
    spec: Rc<TargetSpec>,
    recorder: Rc<Recorder>,
    picker: OpPicker,
    workload: Workload,
    value: Rc<Vec<u8>>,
    request_timeout: Duration,
}

impl Worker {
    /// Sends requests until the deadline or the thread's request bound. Open loop: request k
    /// waits for its intended time and its latency counts from it, so a stalled server shows
    /// as latency of every request that should have gone out meanwhile.
    async fn measure(
        mut self,
        start: Instant,
        deadline: Instant,
        schedule: Option<OpenLoopSchedule>,
        tokens: Rc<Cell<u64>>,
    ) {
        let mut key = Vec::with_capacity(32);
        let mut sent = 0u64;
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let intended = match &schedule {
                Some(schedule) => {
                    let at = start + schedule.intended_offset(sent);
                    if at >= deadline {
                        break;
                    }
                    wait_until(at).await;
                    Some(at)
                }
                None => None,
            };
            if tokens.get() == 0 {
                break;
            }
            tokens.set(tokens.get() - 1);
            let op = self.picker.next_op();
            write_key(&mut key, op.key_index);
            let Some((connection, generation)) = self
                .slot
                .acquire(&self.spec, &self.recorder, deadline)
                .await
            else {
                break;
            };
            let sent_at = Instant::now();
            sent += 1;
            let result = within(
                self.request_timeout,
                connection.request(
                    op.kind,
                    &key,
                    &self.value[..op.value_bytes],
                    self.workload.ttl,
                ),
            )
            .await;
            let latency = Instant::now().saturating_duration_since(intended.unwrap_or(sent_at));
            self.settle(op.kind, result, latency, generation);
        }
        if let Some(schedule) = schedule {
            let due = schedule.due_before(deadline.saturating_duration_since(start));
            self.recorder
                .unsent
                .set(self.recorder.unsent.get() + due.saturating_sub(sent));
        }
    }

    /// Writes keys from the shared counter until none are left or time is up.
    async fn preload(mut self, deadline: Instant, next_key: Rc<Cell<u64>>, end: u64) {
        let mut key = Vec::with_capacity(32);
        while Instant::now() < deadline {
            let index = next_key.get();
            if index >= end {
                break;
            }
            next_key.set(index + 1);
            write_key(&mut key, index);
            let bytes = self.picker.next_value_bytes();
            let Some((connection, generation)) = self
                .slot
                .acquire(&self.spec, &self.recorder, deadline)
                .await
            else {
                break;
            };
            let sent_at = Instant::now();
            let result = within(
                self.request_timeout,
                connection.request(OpKind::Set, &key, &self.value[..bytes], self.workload.ttl),
            )
            .await;
            if result.is_ok() {
                self.recorder
                    .keys_written
                    .set(self.recorder.keys_written.get() + 1);
            }
            self.settle(OpKind::Set, result, sent_at.elapsed(), generation);
        }
    }

    fn settle(
        &mut self,
        kind: OpKind,
        result: Result<Outcome, OpError>,
        latency: Duration,
        generation: u64,
    ) {
        match result {
            Ok(outcome) => {
                self.recorder.record(kind, outcome, latency);
                self.slot.succeeded();
            }
            Err(error) => {
                self.recorder.error(&error);
                if error.breaks_connection() {
                    self.slot.broken(generation);
                }
            }
        }
    }
}

/// One connection of a thread, shared by its workers; replaced after it breaks.
struct ConnectionSlot {
    connection: RefCell<Option<Rc<TargetConnection>>>,
    /// Counts connections made, so a late error from an old one does not break a new one.
    generation: Cell<u64>,
    connecting: Cell<bool>,
    retry_at: Cell<Option<Instant>>,
    backoff_ms: Cell<u64>,
}

impl ConnectionSlot {
    fn new() -> ConnectionSlot {
        ConnectionSlot {
            connection: RefCell::new(None),
            generation: Cell::new(0),
            connecting: Cell::new(false),
            retry_at: Cell::new(None),
            backoff_ms: Cell::new(RECONNECT_BACKOFF_MS_MIN),
        }
    }

    async fn connect_once(&self, spec: &TargetSpec, recorder: &Recorder, by: Instant) {
        let budget = by.saturating_duration_since(Instant::now());
        match within(budget, TargetConnection::connect(spec)).await {
            Ok(connection) => self.install(connection),
            Err(error) => {
                recorder.error(&error);
                self.back_off();
            }
        }
    }

    fn install(&self, connection: TargetConnection) {
        *self.connection.borrow_mut() = Some(Rc::new(connection));
        self.generation.set(self.generation.get() + 1);
    }

    /// The live connection, connecting (after any backoff) if there is none; `None` once
    /// the deadline has passed.
    async fn acquire(
        &self,
        spec: &TargetSpec,
        recorder: &Recorder,
        deadline: Instant,
    ) -> Option<(Rc<TargetConnection>, u64)> {
        loop {
            if let Some(connection) = self.connection.borrow().as_ref() {
                return Some((connection.clone(), self.generation.get()));
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let wait_until_at = if self.connecting.get() {
                Some(now + Duration::from_millis(1))
            } else {
                self.retry_at.get().filter(|&at| at > now)
            };
            if let Some(at) = wait_until_at {
                wait_until(at.min(deadline)).await;
                continue;
            }
            self.connecting.set(true);
            self.connect_once(spec, recorder, deadline.min(now + spec.connect_timeout))
                .await;
            self.connecting.set(false);
        }
    }

    fn back_off(&self) {
        let backoff = self.backoff_ms.get();
        self.retry_at
            .set(Some(Instant::now() + Duration::from_millis(backoff)));
        self.backoff_ms
            .set((backoff * 2).min(RECONNECT_BACKOFF_MS_MAX));
    }

    fn succeeded(&self) {
        self.backoff_ms.set(RECONNECT_BACKOFF_MS_MIN);
    }

    /// Drops connection `generation` if it is still the current one, and backs off.
    fn broken(&self, generation: u64) {
        if generation != self.generation.get() {
            return;
        }
        if let Some(connection) = self.connection.borrow_mut().take() {
            connection.close();
            self.back_off();
        }
    }

    fn close(&self) {
        if let Some(connection) = self.connection.borrow_mut().take() {
            connection.close();
        }
    }
}

/// This thread's measurements.
struct Recorder {
    interval: RefCell<[LatencyHistogram; 2]>,
    total: RefCell<[LatencyHistogram; 2]>,
    interval_errors: Cell<u64>,
    errors: RefCell<BTreeMap<String, u64>>,
    hits: Cell<u64>,
    misses: Cell<u64>,
    unsent: Cell<u64>,
    keys_written: Cell<u64>,
}

impl Recorder {
    fn new() -> Recorder {
        let pair = || [new_latency_histogram(), new_latency_histogram()];
        Recorder {
            interval: RefCell::new(pair()),
            total: RefCell::new(pair()),
            interval_errors: Cell::new(0),
            errors: RefCell::new(BTreeMap::new()),
            hits: Cell::new(0),
            misses: Cell::new(0),
            unsent: Cell::new(0),
            keys_written: Cell::new(0),
        }
    }

    fn record(&self, kind: OpKind, outcome: Outcome, latency: Duration) {
        record_latency(&mut self.interval.borrow_mut()[kind.index()], latency);
        match outcome {
            Outcome::Hit => self.hits.set(self.hits.get() + 1),
            Outcome::Miss => self.misses.set(self.misses.get() + 1),
            Outcome::Stored => {}
        }
    }

    fn error(&self, error: &OpError) {
        *self.errors.borrow_mut().entry(error.kind()).or_insert(0) += 1;
        self.interval_errors.set(self.interval_errors.get() + 1);
    }

    /// Moves the interval's latencies into the totals and returns a copy of them.
    fn take_interval(
        &self,
        thread_index: usize,
        index: u64,
        start_offset: Duration,
        duration: Duration,
    ) -> IntervalSample {
        let mut interval = self.interval.borrow_mut();
        let mut total = self.total.borrow_mut();
        let latencies = [interval[0].clone(), interval[1].clone()];
        for kind in OpKind::ALL {
            merge(&mut total[kind.index()], &interval[kind.index()]);
            interval[kind.index()].reset();
        }
        IntervalSample {
            thread_index,
            index,
            start_offset,
            duration,
            latencies,
            errors: self.interval_errors.replace(0),
        }
    }

    fn into_totals(self: Rc<Self>, finished_at: Instant) -> ThreadTotals {
        let mut latencies = self.total.borrow().clone();
        for kind in OpKind::ALL {
            // Anything not yet moved by an interval (the preload has no intervals).
            merge(
                &mut latencies[kind.index()],
                &self.interval.borrow()[kind.index()],
            );
        }
        ThreadTotals {
            latencies,
            hits: self.hits.get(),
            misses: self.misses.get(),
            errors: self.errors.borrow().clone(),
            unsent: self.unsent.get(),
            finished_at,
            keys_written: self.keys_written.get(),
        }
    }
}

/// Runs `work` for at most `limit`; past it, `OpError::Timeout` (and `work` is dropped).
pub async fn within<T>(
    limit: Duration,
    work: impl Future<Output = Result<T, OpError>>,
) -> Result<T, OpError> {
    future::or(work, async {
        glommio::timer::sleep(limit).await;
        Err(OpError::Timeout)
    })
    .await
}

async fn wait_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        glommio::timer::sleep(at - now).await;
    }
}
