//! The worker's side of the bus: pull runs, only as many as there are free slots, run them
//! here, store each result once.
//!
//! **Taking work.** A worker keeps one list of consumers: the short class of each of its
//! runtimes, then the long class. When a full worker gets a free slot again it asks them
//! in that order for one job each (a no-wait fetch) until one answers; so with a backlog,
//! short runs of any runtime go first. An idle worker does not poll: while it has a free slot it is a
//! member of one queue group per runtime on the job subjects, so each published job wakes
//! exactly one idle worker, which then claims it (or another, older one) from the
//! consumer. A full worker leaves the groups, so jobs wake only workers that can take
//! them. A sweep every second catches anything a wake-up missed. A wake-up carries the
//! job: a run nobody watches starts at once while the worker claims it, and is kept only
//! if the claim brings that very job ([`launch_woken`]).
//!
//! **Running.** While a job runs its message is kept in progress every third of the ack
//! wait; a worker that dies stops doing so and JetStream hands the job to another worker
//! after the ack wait. The slot is free again when the run ends, while its result is
//! stored. The delivery after [`BusConfig::max_deliveries`] is not run: it ends
//! `internal_error`. Results go to the results bucket with `create`, which fails if the
//! job already has one: a job is never reported twice, even if a slow worker and its
//! replacement both finish it.
//!
//! **Draining.** On its drain signal a worker leaves the queue groups, takes no new job,
//! finishes the ones it has, says so in its heartbeat, waits until the compiled programs it
//! offered to the shared cache are stored, and returns. A server that does not answer does
//! not hold it: claims and its leaving word wait at most [`SERVER_PATIENCE`] each.
//!
//! [`BusConfig::max_deliveries`]: cod_fleet::bus::BusConfig::max_deliveries

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use cod_core::RunResult;
use cod_fleet::bus::{
    self, Bus, BusError, Class, Heartbeat, cancel_subject, events_ack_subject, events_subject,
    input_subject, now_ms,
};
use cod_runtime::executor::{OutStream, RunEvent, RunInput, RunIo, StageKind};
use cod_runtime::{Executor, Language};
use futures_util::StreamExt;
use futures_util::stream::SelectAll;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use super::{
    Accepted, BeforeStart, EVENT_WINDOW, Envelope, JobMessage, WireEvent, WireInput, WireKind,
};
use crate::worker::internal_error;

/// Who a worker is and what it takes.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Its id in heartbeats, results and logs.
    pub id: String,
    /// The machine it runs on.
    pub host: String,
    /// Runtimes it takes jobs of.
    pub runtimes: Vec<String>,
    /// Sandbox slots it runs jobs in.
    pub slots: Vec<u32>,
    /// The version it reports.
    pub version: String,
    /// Build missing prebuilds (precompiled headers, class-data archives) first, in one
    /// slot, while the others take jobs.
    pub prebuild: bool,
}

struct Ctx {
    bus: Bus,
    executor: Arc<Executor>,
    opts: WorkerOptions,
    busy: AtomicU32,
    done: AtomicU64,
    draining: AtomicBool,
    /// Jobs in hand, until their results are stored.
    tasks: TaskTracker,
}

/// Takes jobs of `opts.runtimes` from `bus` and runs them on `executor` until `drain` is
/// cancelled and the last running job has finished. Fails only if the stream and
/// consumers cannot be set up.
pub async fn serve_jobs(
    bus: Bus,
    executor: Arc<Executor>,
    opts: WorkerOptions,
    drain: CancellationToken,
) -> Result<(), BusError> {
    let mut consumers = Vec::new();
    for class in Class::ALL {
        for rt in &opts.runtimes {
            consumers.push((bus::job_subject(rt, class), bus.consumer(rt, class).await?));
        }
    }
    let shared = bus.artifacts.as_ref().map(|store| {
        let shared = Arc::new(super::SharedCompiles::new(store.clone()));
        executor.share_compiles(shared.clone());
        shared
    });
    let ctx = Arc::new(Ctx {
        bus,
        executor,
        opts,
        busy: AtomicU32::new(0),
        done: AtomicU64::new(0),
        draining: AtomicBool::new(false),
        tasks: TaskTracker::new(),
    });
    let beats = tokio::spawn(heartbeats(ctx.clone()));
    let (freed_tx, mut freed_rx) = mpsc::unbounded_channel::<u32>();
    let mut free = ctx.opts.slots.clone();
    let total = free.len();
    // A slot is held (and counted busy) only if there is something to build.
    let missing = if ctx.opts.prebuild {
        missing_prebuilds(&ctx)
    } else {
        Vec::new()
    };
    if !missing.is_empty()
        && let Some(slot) = free.pop()
    {
        tokio::spawn(prebuild(
            ctx.clone(),
            missing,
            Held::new(&ctx, slot, &freed_tx),
        ));
    }
    info!(worker = %ctx.opts.id, slots = total, runtimes = ?ctx.opts.runtimes, "worker ready");
    let mut wake: Option<SelectAll<async_nats::Subscriber>> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep = true;
    let mut draining = false;
    // Whether the last sweep's claim went unanswered: said once per outage, not per sweep.
    let mut unanswered = false;
    loop {
        if draining {
            wake = None;
            if free.len() == total {
                break;
            }
        } else {
            if !free.is_empty() && wake.is_none() {
                // Back in the groups first, then a sweep: a job published before the
                // subscription took effect is still in the stream, and the sweep's fetch
                // reaches the server after the subscription does.
                wake = Some(join_groups(&ctx).await);
                sweep = true;
            }
            if sweep {
                sweep = false;
                while !free.is_empty() && !drain.is_cancelled() {
                    let claimed = claim_any(&consumers).await;
                    if claimed.is_err() != unanswered {
                        unanswered = claimed.is_err();
                        if unanswered {
                            warn!(worker = %ctx.opts.id, "the server does not answer claims; sweeping again every second");
                        } else {
                            info!(worker = %ctx.opts.id, "the server answers claims again");
                        }
                    }
                    let Ok(Some(msg)) = claimed else {
                        break;
                    };
                    launch(&ctx, msg, &mut free, &freed_tx);
                }
            }
            if free.is_empty() {
                // Full: wake-ups must go to workers that can take the job.
                wake = None;
            }
        }
        tokio::select! {
            Some(woke) = next(&mut wake) => {
                // Claim from the consumer the job was published to first.
                if let Some((_, c)) = consumers.iter().find(|(s, _)| *s == woke.subject.as_str())
                    && !free.is_empty()
                {
                    if let Some(job) = ahead(&woke) {
                        launch_woken(&ctx, c.clone(), woke, job, &mut free, &freed_tx);
                    } else if let Some(msg) = claim_woken(c).await {
                        launch(&ctx, msg, &mut free, &freed_tx);
                    }
                }
            }
            Some(slot) = freed_rx.recv() => {
                // A worker that was full left the wake-up groups, and rejoining them
                // sweeps (above). One that was not full heard of every job since: its
                // freed slot waits for the next wake-up.
                free.push(slot);
            }
            _ = tick.tick() => sweep = true,
            () = drain.cancelled(), if !draining => {
                draining = true;
                ctx.draining.store(true, Ordering::Relaxed);
                info!(worker = %ctx.opts.id, running = total - free.len(), "draining: finishing the runs in hand, taking no new ones");
                let _ = tokio::time::timeout(
                    SERVER_PATIENCE,
                    ctx.bus.workers.put(&ctx.opts.id, heartbeat(&ctx).into()),
                )
                .await;
            }
        }
    }
    // Slots are given back as runs end; their results may still be on the way.
    ctx.tasks.close();
    ctx.tasks.wait().await;
    // And the compiled programs it offered to the other workers.
    if let Some(shared) = &shared {
        shared.settle().await;
    }
    beats.abort();
    // Gone for good: out of the list at once rather than dead after a while.
    let _ = tokio::time::timeout(SERVER_PATIENCE, ctx.bus.workers.delete(&ctx.opts.id)).await;
    info!(worker = %ctx.opts.id, done = ctx.done.load(Ordering::Relaxed), "worker drained");
    Ok(())
}

/// Joins the wake-up queue group of each runtime.
async fn join_groups(ctx: &Ctx) -> SelectAll<async_nats::Subscriber> {
    let mut all = SelectAll::new();
    for rt in &ctx.opts.runtimes {
        let subject = format!("cod.jobs.{}.*", bus::token(rt));
        match ctx
            .bus
            .client
            .queue_subscribe(subject, format!("wake-{}", bus::token(rt)))
            .await
        {
            Ok(s) => all.push(s),
            Err(e) => warn!(error = %e, "joining a wake-up group failed; sweeps still find jobs"),
        }
    }
    all
}

/// How long a worker waits for the server's answer to a claim or to its leaving word. A
/// server that answers nothing (down, or its answer lost in a reconnect) must not hold the
/// worker: a claim unanswered is given up, and a message the server delivers to it later
/// is delivered again after `fleet.ack_wait`, as one whose worker was lost.
pub(super) const SERVER_PATIENCE: Duration = Duration::from_secs(2);

/// One job from `c` if it has one waiting; `Err` if the server did not answer.
async fn claim(
    c: &consumer::Consumer<consumer::pull::Config>,
) -> Result<Option<jetstream::Message>, tokio::time::error::Elapsed> {
    tokio::time::timeout(SERVER_PATIENCE, async {
        one(c.fetch().max_messages(1).messages().await).await
    })
    .await
}

/// The message a pull of one brought, if any.
async fn one(
    batch: Result<consumer::pull::Batch, consumer::pull::BatchError>,
) -> Option<jetstream::Message> {
    match batch.ok()?.next().await {
        Some(Ok(m)) => Some(m),
        _ => None,
    }
}

/// The job a wake-up announced. The wake-up can arrive before JetStream has stored the
/// job (subscribers hear of a message as the stream is storing it): the pull waits a
/// little for it rather than find the stream empty.
async fn claim_woken(c: &consumer::Consumer<consumer::pull::Config>) -> Option<jetstream::Message> {
    let pull = async {
        one(c
            .batch()
            .max_messages(1)
            .expires(WOKEN_PATIENCE)
            .messages()
            .await)
        .await
    };
    tokio::time::timeout(WOKEN_PATIENCE + SERVER_PATIENCE, pull)
        .await
        .ok()
        .flatten()
}

/// How long a woken worker waits for the announced job to be stored.
const WOKEN_PATIENCE: Duration = Duration::from_millis(100);

/// One job from the first of `consumers` (short classes first) that has one; `Err` if a
/// claim went unanswered (the sweep stops there, and the next one asks again).
async fn claim_any(
    consumers: &[(String, consumer::Consumer<consumer::pull::Config>)],
) -> Result<Option<jetstream::Message>, tokio::time::error::Elapsed> {
    for (_, c) in consumers {
        if let Some(m) = claim(c).await? {
            return Ok(Some(m));
        }
    }
    Ok(None)
}

/// Takes a free slot for a job of the subject `subject`: one keeping its runtime warm if
/// one is free (asking also tells the pool what is in demand).
fn hold(
    ctx: &Arc<Ctx>,
    subject: &str,
    free: &mut Vec<u32>,
    freed: &mpsc::UnboundedSender<u32>,
) -> Option<Held> {
    // The runtime is the subject's third token.
    let runtime = subject.split('.').nth(2).unwrap_or_default();
    let warm = ctx.executor.warm_slots(runtime);
    if let Some(i) = free.iter().position(|s| warm.contains(s)) {
        let last = free.len() - 1;
        free.swap(i, last);
    }
    Some(Held::uncounted(ctx, free.pop()?, freed))
}

fn launch(
    ctx: &Arc<Ctx>,
    msg: jetstream::Message,
    free: &mut Vec<u32>,
    freed: &mpsc::UnboundedSender<u32>,
) {
    let Some(held) = hold(ctx, &msg.subject, free, freed) else {
        // Not reached: callers claim only with a free slot. Let another worker have it.
        tokio::spawn(async move {
            let _ = msg.ack_with(AckKind::Nak(None)).await;
        });
        return;
    };
    let ctx = ctx.clone();
    ctx.tasks
        .clone()
        .spawn(async move { serve_job(&ctx, msg, held, None).await });
}

/// The job a wake-up carries, if it may start before it is claimed: a run whose output
/// nobody watches (a streamed or interactive run sends events, which must come from the
/// delivery that owns the job).
fn ahead(woke: &async_nats::Message) -> Option<JobMessage> {
    let job: JobMessage = postcard::from_bytes(&woke.payload).ok()?;
    (!job.stream && !job.interactive).then_some(job)
}

/// Starts the job a wake-up carries at once and claims it meanwhile, so that the claim's
/// round trip overlaps the run. If the claim brings another job (an older one waiting) or
/// none (another worker took it), the early run is dropped, which kills it: it has sent
/// nothing and stored nothing.
fn launch_woken(
    ctx: &Arc<Ctx>,
    consumer: consumer::Consumer<consumer::pull::Config>,
    woke: async_nats::Message,
    job: JobMessage,
    free: &mut Vec<u32>,
    freed: &mpsc::UnboundedSender<u32>,
) {
    let Some(held) = hold(ctx, &woke.subject, free, freed) else {
        return;
    };
    let ctx = ctx.clone();
    ctx.tasks.clone().spawn(async move {
        let Ok(prepared) = job.item.to_job(&ctx.executor) else {
            // The delivery will say why.
            if let Some(msg) = claim_woken(&consumer).await {
                serve_job(&ctx, msg, held, None).await;
            }
            return;
        };
        let span = info_span!("job", id = %job.item.id, language = %job.item.language, attempt = 1u32, slot = held.slot);
        let mut begun = Begun::start(&ctx, prepared, held.slot, None, span);
        let claim = claim_woken(&consumer);
        tokio::pin!(claim);
        let msg = loop {
            tokio::select! {
                m = &mut claim => break m,
                () = begun.step() => {}
            }
        };
        match msg {
            Some(msg)
                if msg.payload == woke.payload
                    && msg.info().is_ok_and(|i| i.delivered == 1) =>
            {
                serve_job(&ctx, msg, held, Some((job, begun))).await;
            }
            other => {
                drop(begun);
                tracing::debug!(job = %job.item.id, claimed_another = other.is_some(),
                    "early start dropped: the claim did not bring the announced job");
                if let Some(msg) = other {
                    serve_job(&ctx, msg, held, None).await;
                }
            }
        }
    });
}

/// A started run: its result, and its events until it ends. One started before its job
/// was claimed holds its events until the claim succeeds.
struct Begun {
    run: std::pin::Pin<Box<dyn std::future::Future<Output = RunResult> + Send>>,
    events: mpsc::Receiver<RunEvent>,
    result: Option<RunResult>,
    /// Usage events (all a run nobody watches sends), in order.
    held: Vec<RunEvent>,
}

impl Begun {
    /// Starts `prepared` in `slot`, with `input` for an interactive run, in `span`.
    fn start(
        ctx: &Ctx,
        prepared: cod_runtime::Job,
        slot: u32,
        input: Option<mpsc::Receiver<RunInput>>,
        span: tracing::Span,
    ) -> Begun {
        let (tx, rx) = mpsc::channel(16);
        let executor = ctx.executor.clone();
        let mut io = RunIo { events: tx, input };
        Begun {
            run: Box::pin(
                async move { executor.execute_streaming(&prepared, slot, &mut io).await }
                    .instrument(span),
            ),
            events: rx,
            result: None,
            held: Vec::new(),
        }
    }

    /// Moves the run on by one event or its end; pending forever once both are done.
    async fn step(&mut self) {
        tokio::select! {
            r = &mut self.run, if self.result.is_none() => self.result = Some(r),
            Some(e) = self.events.recv() => {
                if matches!(e, RunEvent::Usage { .. }) {
                    self.held.push(e);
                }
            }
            else => std::future::pending().await,
        }
    }
}

/// A slot a job holds; dropping it (or [`Held::release`]) gives the slot back.
struct Held {
    ctx: Arc<Ctx>,
    slot: u32,
    freed: Option<mpsc::UnboundedSender<u32>>,
    /// Whether the slot counts in the heartbeat's `busy`.
    counted: bool,
}

impl Held {
    /// Holds `slot`: counted busy until given back on `freed`.
    fn new(ctx: &Arc<Ctx>, slot: u32, freed: &mpsc::UnboundedSender<u32>) -> Held {
        let mut held = Held::uncounted(ctx, slot, freed);
        held.count();
        held
    }

    /// Holds `slot` for a job: it counts as busy only once a claim brought the job
    /// ([`Held::count`], which `serve_job` calls), so that a worker that reports a run in
    /// hand has its delivery even when the run started before its claim.
    fn uncounted(ctx: &Arc<Ctx>, slot: u32, freed: &mpsc::UnboundedSender<u32>) -> Held {
        Held {
            ctx: ctx.clone(),
            slot,
            freed: Some(freed.clone()),
            counted: false,
        }
    }

    /// Counts the slot busy from now on.
    fn count(&mut self) {
        if !self.counted && self.freed.is_some() {
            self.counted = true;
            self.ctx.busy.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The run is over: the slot can take the next job while this one's result is stored.
    fn release(&mut self) {
        if let Some(freed) = self.freed.take() {
            if std::mem::take(&mut self.counted) {
                self.ctx.busy.fetch_sub(1, Ordering::Relaxed);
            }
            let _ = freed.send(self.slot);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release();
    }
}

/// This worker's languages whose prebuild is missing.
fn missing_prebuilds(ctx: &Ctx) -> Vec<Arc<Language>> {
    ctx.executor
        .registry()
        .all()
        .iter()
        .filter(|lang| ctx.opts.runtimes.contains(&lang.name) && lang.prebuild_missing())
        .cloned()
        .collect()
}

/// Builds the `missing` prebuilds in the `held` slot, then gives it back.
async fn prebuild(ctx: Arc<Ctx>, missing: Vec<Arc<Language>>, held: Held) {
    let slot = held.slot;
    for lang in &missing {
        match ctx.executor.prebuild(lang, slot).await {
            Ok(true) => info!(language = %lang.name, "prebuild ready"),
            Ok(false) => {}
            Err(e) => {
                warn!(language = %lang.name, error = %e, "prebuild failed; compiles run without it")
            }
        }
    }
    drop(held);
}

fn heartbeat(ctx: &Ctx) -> Vec<u8> {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let hb = Heartbeat {
        id: ctx.opts.id.clone(),
        host: ctx.opts.host.clone(),
        runtimes: ctx.opts.runtimes.clone(),
        slots: u32::try_from(ctx.opts.slots.len()).unwrap_or(u32::MAX),
        busy: ctx.busy.load(Ordering::Relaxed),
        load,
        version: ctx.opts.version.clone(),
        draining: ctx.draining.load(Ordering::Relaxed),
        done: ctx.done.load(Ordering::Relaxed),
        at_ms: now_ms(),
    };
    serde_json::to_vec(&hb).unwrap_or_default()
}

async fn heartbeats(ctx: Arc<Ctx>) {
    let mut every = tokio::time::interval(ctx.bus.config.heartbeat);
    loop {
        every.tick().await;
        if let Err(e) = ctx
            .bus
            .workers
            .put(&ctx.opts.id, heartbeat(&ctx).into())
            .await
        {
            warn!(worker = %ctx.opts.id, error = %e, "heartbeat not stored");
        }
    }
}

/// Sends a job's events in order, at most [`EVENT_WINDOW`] ahead of the gateway.
struct Events {
    client: async_nats::Client,
    subject: String,
    attempt: u32,
    seq: u64,
    acked: u64,
    acks: Option<async_nats::Subscriber>,
    patience: Duration,
}

impl Events {
    async fn send(&mut self, kind: WireKind) {
        self.seq += 1;
        while self.seq > self.acked + EVENT_WINDOW {
            let Some(acks) = self.acks.as_mut() else {
                break;
            };
            match tokio::time::timeout(self.patience, acks.next()).await {
                Ok(Some(m)) => {
                    let text = String::from_utf8_lossy(&m.payload);
                    let mut it = text.split(' ');
                    if let (Some(a), Some(s)) = (it.next(), it.next())
                        && a.parse() == Ok(self.attempt)
                        && let Ok(s) = s.parse::<u64>()
                    {
                        self.acked = self.acked.max(s);
                    }
                }
                // The gateway is gone or stuck: nothing is buffered for it here, so send on.
                _ => {
                    self.acks = None;
                    break;
                }
            }
        }
        let e = WireEvent {
            seq: self.seq,
            attempt: self.attempt,
            kind,
        };
        if let Ok(bytes) = postcard::to_stdvec(&e) {
            let _ = self
                .client
                .publish(self.subject.clone(), bytes.into())
                .await;
        }
    }
}

fn wire(event: RunEvent, stream: bool) -> Option<WireKind> {
    let compile = |s: StageKind| s == StageKind::Compile;
    match event {
        RunEvent::Usage {
            stage,
            cpu_ms,
            memory_kb,
            wall_ms,
        } => Some(WireKind::Usage {
            compile: compile(stage),
            cpu_ms,
            memory_kb,
            wall_ms,
        }),
        RunEvent::Stage(s) if stream => Some(WireKind::Stage {
            compile: compile(s),
        }),
        RunEvent::Output {
            stage,
            stream: out,
            data,
        } if stream => Some(WireKind::Out {
            compile: compile(stage),
            stderr: out == OutStream::Stderr,
            data,
        }),
        _ => None,
    }
}

/// Runs one delivered job and answers it.
/// `begun`: the job, parsed, and its run, started before the claim (a first delivery).
async fn serve_job(
    ctx: &Ctx,
    msg: jetstream::Message,
    mut held: Held,
    begun: Option<(JobMessage, Begun)>,
) {
    // Claimed: the slot counts busy from now on (an early start held it uncounted).
    held.count();
    let slot = held.slot;
    let (job, begun) = match begun {
        Some((job, b)) => (job, Some(b)),
        None => match postcard::from_bytes(&msg.payload) {
            Ok(j) => (j, None),
            Err(e) => {
                warn!(subject = %msg.subject, error = %e, "a job message that does not parse: dropped");
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
        },
    };
    let attempt = msg
        .info()
        .map(|i| u32::try_from(i.delivered).unwrap_or(u32::MAX))
        .unwrap_or(1);
    let id = job.item.id.clone();
    let span = info_span!("job", id = %id, language = %job.item.language, attempt, slot);
    async move {
        // A redelivered job may have finished before (its acknowledgement lost): look.
        if attempt > 1 && matches!(ctx.bus.results.get(&id).await, Ok(Some(_))) {
            // Finished before, its acknowledgement lost: nothing to do again.
            let _ = msg.ack().await;
            return;
        }
        // Subscribed before the accepted entry is read, so that no cancel falls between.
        let cancel = ctx.bus.client.subscribe(cancel_subject(&id)).await.ok();
        let found = if job.tracked {
            super::before_start(&ctx.bus, &id).await
        } else {
            BeforeStart::Unknown
        };
        if found == BeforeStart::Cancelled {
            info!("job cancelled before it started");
            let _ = msg.ack().await;
            return;
        }
        let started_ms = now_ms();
        // Other gateways tell an asynchronous job's start from its accepted entry.
        let noted = match found {
            BeforeStart::Waiting(revision) => {
                let entry = Accepted {
                    worker: Some(ctx.opts.id.clone()),
                    started_ms: Some(started_ms),
                    ..Accepted::queued(&job)
                };
                let (bus, id) = (ctx.bus.clone(), id.clone());
                Some(tokio::spawn(async move {
                    super::note_started(&bus, &id, &entry, revision).await;
                }))
            }
            _ => None,
        };
        let (result, events) = if attempt > ctx.bus.config.max_deliveries {
            warn!("delivered {attempt} times: its workers were lost; ending it");
            let r = internal_error(
                &job.item,
                &format!("the job was delivered {attempt} times and its worker was lost each time"),
            );
            (Some(r), 0)
        } else {
            run(ctx, &msg, &job, attempt, slot, begun, cancel).await
        };
        held.release();
        let Some(result) = result else {
            // Its accepted entry says cancelled, for every gateway to show.
            info!("job cancelled by its gateway");
            let _ = msg.ack().await;
            return;
        };
        let envelope = Envelope {
            result,
            worker: ctx.opts.id.clone(),
            attempt,
            client: job.client.clone(),
            created_ms: job.created_ms,
            started_ms,
            finished_ms: now_ms(),
            events,
        };
        let bytes = serde_json::to_vec(&envelope).unwrap_or_default();
        match ctx.bus.results.create(&id, bytes.into()).await {
            // The bucket announces it on the job's done subject itself (republish).
            Ok(_) => {
                ctx.done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.kind() == jetstream::kv::CreateErrorKind::AlreadyExists => {
                info!("another delivery of this job finished first: this result is dropped");
            }
            Err(e) => {
                // Not stored: not acknowledged either, so the job runs again elsewhere.
                warn!(error = %e, "the result could not be stored; the job will be redelivered");
                return;
            }
        }
        if let Err(e) = msg.ack().await {
            warn!(error = %e, "acknowledging the job failed (a redelivery will find its result)");
        }
        forget(ctx, &id, job.tracked, noted).await;
    }
    .instrument(span)
    .await
}

/// Removes a tracked job's accepted entry once it has ended (after `noted`, the note that
/// it started, which could not replace the removal anyway: it writes over the revision it
/// read only).
async fn forget(ctx: &Ctx, id: &str, tracked: bool, noted: Option<tokio::task::JoinHandle<()>>) {
    if let Some(noted) = noted {
        let _ = noted.await;
    }
    if tracked {
        let _ = tokio::time::timeout(SERVER_PATIENCE, ctx.bus.accepted.purge(id)).await;
    }
}

/// Runs `job` in `slot`, keeping its message in progress and relaying events, input and
/// cancellation. `None` if its gateway cancelled it; the number of events sent.
async fn run(
    ctx: &Ctx,
    msg: &jetstream::Message,
    job: &JobMessage,
    attempt: u32,
    slot: u32,
    begun: Option<Begun>,
    mut cancel: Option<async_nats::Subscriber>,
) -> (Option<RunResult>, u64) {
    let id = &job.item.id;
    let client = &ctx.bus.client;
    let mut input_sub = if job.interactive {
        client.subscribe(input_subject(id)).await.ok()
    } else {
        None
    };
    let mut events = Events {
        client: client.clone(),
        subject: events_subject(id),
        attempt,
        seq: 0,
        acked: 0,
        // Only a streamed job can send more than a window of events (output); the others
        // send their usage alone.
        acks: if job.stream {
            client.subscribe(events_ack_subject(id)).await.ok()
        } else {
            None
        },
        patience: ctx.bus.config.ack_wait,
    };
    if job.stream {
        // Every attempt of a streamed job sends at least this, so the gateway knows when
        // it has all of an attempt's events.
        events
            .send(WireKind::Started {
                worker: ctx.opts.id.clone(),
                slot,
            })
            .await;
    }
    let (in_tx, in_rx) = mpsc::channel(16);
    let (mut run, mut rx, mut result) = match begun {
        Some(b) => {
            for e in b.held {
                if let Some(kind) = wire(e, job.stream) {
                    events.send(kind).await;
                }
            }
            (b.run, b.events, b.result)
        }
        None => {
            let prepared = match job.item.to_job(&ctx.executor) {
                Ok(j) => j,
                Err(e) => {
                    return (
                        Some(internal_error(
                            &job.item,
                            &format!("the job does not check here: {e}"),
                        )),
                        events.seq,
                    );
                }
            };
            let input = job.interactive.then_some(in_rx);
            let b = Begun::start(ctx, prepared, slot, input, tracing::Span::current());
            (b.run, b.events, None)
        }
    };
    let mut progress =
        tokio::time::interval((ctx.bus.config.ack_wait / 3).max(Duration::from_millis(100)));
    progress.tick().await;
    loop {
        tokio::select! {
            r = &mut run, if result.is_none() => result = Some(r),
            e = rx.recv() => match e {
                Some(e) => {
                    if let Some(kind) = wire(e, job.stream) {
                        events.send(kind).await;
                    }
                }
                // Every event is out (the channel closes with the run).
                None => if result.is_some() { break },
            },
            _ = progress.tick() => {
                let _ = msg.ack_with(AckKind::Progress).await;
            }
            Some(_) = next(&mut cancel) => {
                if job.interactive {
                    let _ = in_tx.send(RunInput::Kill).await;
                } else {
                    return (None, events.seq);
                }
            }
            Some(m) = next(&mut input_sub) => {
                if let Ok(i) = postcard::from_bytes::<WireInput>(&m.payload) {
                    let i = match i {
                        WireInput::Stdin(b) => RunInput::Stdin(b),
                        WireInput::Close => RunInput::Close,
                        WireInput::Kill => RunInput::Kill,
                    };
                    let _ = in_tx.send(i).await;
                }
            }
        }
    }
    (Some(result.unwrap_or_default()), events.seq)
}

/// The next item of `stream`, or never when there is none (a `select!` branch that sleeps).
async fn next<S: futures_util::Stream + Unpin>(stream: &mut Option<S>) -> Option<S::Item> {
    match stream {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::WorkItem;

    fn woke(stream: bool, interactive: bool) -> async_nats::Message {
        let job = JobMessage {
            item: WorkItem {
                id: "j1".into(),
                language: "python".into(),
                files: vec![("main.py".into(), b"print(1)".to_vec())],
                stdin: Vec::new(),
                args: Vec::new(),
                limits: cod_core::limits::LimitsSpec::DEFAULT,
                compile_limits: cod_core::limits::LimitsSpec::DEFAULT,
            },
            client: "k".into(),
            created_ms: 1,
            stream,
            interactive,
            tracked: false,
        };
        let payload: bytes::Bytes = postcard::to_stdvec(&job).expect("encodes").into();
        async_nats::Message {
            subject: "cod.jobs.python.short".into(),
            reply: None,
            length: payload.len(),
            payload,
            headers: None,
            status: None,
            description: None,
        }
    }

    /// Only a run nobody watches starts before its claim: the events of a streamed or
    /// interactive run must come from the delivery that owns it. A wake-up that does not
    /// parse is claimed the usual way (the delivery is then refused with its reason).
    #[test]
    fn only_unwatched_runs_start_ahead_of_their_claim() {
        let job = ahead(&woke(false, false)).expect("runs ahead");
        assert_eq!(job.item.id, "j1");
        assert!(ahead(&woke(true, false)).is_none());
        assert!(ahead(&woke(true, true)).is_none());
        let mut garbage = woke(false, false);
        garbage.payload = bytes::Bytes::from_static(b"\xff\xff");
        assert!(ahead(&garbage).is_none());
    }
}
