//! The executor: a fixed pool of OS threads that runs jobs (functions and commands) and reports
//! their outcomes.

use crate::command::run_command;
use crate::registry::{Registry, TaskContext};
use bytes::Bytes;
use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use taskwire_protocol::{ErrorKindMsg, TaskErrorMsg, TaskId, TaskKindMsg};
use tokio::sync::mpsc::UnboundedSender;

/// One task to run, with its inputs already gathered.
pub struct Job {
    /// The task.
    pub task: TaskId,
    /// Its user-visible key (passed to functions in [`TaskContext`]).
    pub key: String,
    /// What to run.
    pub kind: TaskKindMsg,
    /// The dependencies' results, in the order the task lists its dependencies.
    pub inputs: Vec<Bytes>,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Input sizes, not contents: inputs can be gigabytes.
        let input_lens: Vec<usize> = self.inputs.iter().map(Bytes::len).collect();
        f.debug_struct("Job")
            .field("task", &self.task)
            .field("key", &self.key)
            .field("kind", &self.kind)
            .field("input_lens", &input_lens)
            .finish()
    }
}

/// What became of a [`Job`].
pub struct JobOutcome {
    /// The task.
    pub task: TaskId,
    /// The result bytes, or why there are none.
    pub result: Result<Bytes, TaskErrorMsg>,
    /// When the job started.
    pub started: Instant,
    /// How long the job ran (not counting time in the queue).
    pub duration: Duration,
    /// The executor thread that ran it (`0..nthreads`).
    pub thread: u32,
}

impl fmt::Debug for JobOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("JobOutcome");
        d.field("task", &self.task);
        match &self.result {
            Ok(b) => d.field("ok_len", &b.len()),
            Err(e) => d.field("err", e),
        };
        d.field("duration", &self.duration)
            .field("thread", &self.thread)
            .finish()
    }
}

struct Queue {
    jobs: VecDeque<Job>,
    /// Threads blocked waiting for a job: submit only pays for a wake-up when one is waiting.
    idle: usize,
    shutdown: bool,
    /// Paused: queued jobs wait, running ones go on.
    paused: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    executing: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Jobs run outside the lock and panics are caught, so poisoning cannot leave the queue
        // half-updated: carry on.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reports a finished job from the executor thread that ran it, instead of sending its outcome
/// through the channel (one thread wake-up less per task). It gets the outcome and whether jobs
/// are queued behind it, and hands the outcome back when it should go through the channel
/// after all (`None`: dealt with).
pub(crate) type DirectReport = Arc<dyn Fn(JobOutcome, bool) -> Option<JobOutcome> + Send + Sync>;

/// A pool of `nthreads` OS threads running jobs in submission order (FIFO).
///
/// Outcomes go to the channel given to [`Executor::start`], one per job that ran. A function
/// that panics becomes an outcome of kind [`ErrorKindMsg::Panicked`]; the thread carries on.
pub struct Executor {
    shared: Arc<Shared>,
    env: Arc<Env>,
    threads: Vec<JoinHandle<()>>,
}

impl Executor {
    /// Start `nthreads` threads (at least one) that run functions from `registry` as
    /// `worker_name` and commands in `local_dir` unless they name their own directory.
    ///
    /// # Panics
    ///
    /// If the operating system refuses to start a thread.
    pub fn start(
        nthreads: usize,
        registry: Registry,
        worker_name: String,
        local_dir: PathBuf,
        outcomes: UnboundedSender<JobOutcome>,
    ) -> Executor {
        Executor::start_reporting(nthreads, registry, worker_name, local_dir, outcomes, None)
    }

    /// [`Executor::start`], with outcomes offered to `direct` first.
    pub(crate) fn start_reporting(
        nthreads: usize,
        registry: Registry,
        worker_name: String,
        local_dir: PathBuf,
        outcomes: UnboundedSender<JobOutcome>,
        direct: Option<DirectReport>,
    ) -> Executor {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                idle: 0,
                shutdown: false,
                paused: false,
            }),
            ready: Condvar::new(),
            executing: AtomicUsize::new(0),
        });
        let env = Arc::new(Env {
            registry,
            worker_name,
            local_dir,
            outcomes,
            direct,
        });
        let threads = (0..nthreads.max(1))
            .map(|i| {
                let shared = shared.clone();
                let env = env.clone();
                std::thread::Builder::new()
                    .name(format!("taskwire-exec-{i}"))
                    .spawn(move || run_thread(i, &shared, &env))
                    .expect("spawning an executor thread")
            })
            .collect();
        Executor {
            shared,
            env,
            threads,
        }
    }

    /// Run `job` now on the calling thread, as thread 0, when its function was registered as
    /// quick ([`Registry::register_quick`]) and no job is queued or running (so it overtakes
    /// none, and thread 0's index is free); `None` when it did not run. A panic is caught as
    /// on the executor's threads.
    pub(crate) fn run_here(&self, job: &Job) -> Option<JobOutcome> {
        let quick = match &job.kind {
            TaskKindMsg::Function { name, .. } => self.env.registry.is_quick(name),
            TaskKindMsg::Command(_) => false,
        };
        if !quick {
            return None;
        }
        {
            let q = self.shared.lock();
            // Only this thread submits jobs, so none can start while the quick one runs.
            if q.paused || q.shutdown || !q.jobs.is_empty() || self.executing() > 0 {
                return None;
            }
        }
        let start = Instant::now();
        let result = run_job(0, &self.env, job);
        Some(JobOutcome {
            task: job.task,
            result,
            started: start,
            duration: start.elapsed(),
            thread: 0,
        })
    }

    /// Queue `job`; never blocks on running jobs.
    pub fn submit(&self, job: Job) {
        let mut q = self.shared.lock();
        q.jobs.push_back(job);
        let wake = q.idle > 0;
        drop(q);
        if wake {
            self.shared.ready.notify_one();
        }
    }

    /// Queue several jobs, in order, taking the queue lock once.
    pub fn submit_all(&self, jobs: impl IntoIterator<Item = Job>) {
        let mut q = self.shared.lock();
        let before = q.jobs.len();
        q.jobs.extend(jobs);
        let added = q.jobs.len() - before;
        let wake = q.idle.min(added);
        drop(q);
        for _ in 0..wake {
            self.shared.ready.notify_one();
        }
    }

    /// Remove `task` from the queue if it has not started; true if it was removed (it then
    /// produces no outcome). A job already running is not interrupted.
    pub fn cancel(&self, task: TaskId) -> bool {
        let mut q = self.shared.lock();
        match q.jobs.iter().position(|j| j.task == task) {
            Some(i) => {
                q.jobs.remove(i);
                true
            }
            None => false,
        }
    }

    /// Pause or resume: while paused no queued job starts (jobs already running finish), and
    /// submitted jobs stay queued, in order, until [`Executor::set_paused`]`(false)`.
    pub fn set_paused(&self, paused: bool) {
        let mut q = self.shared.lock();
        let resumed = q.paused && !paused;
        q.paused = paused;
        let wake = if resumed { q.idle.min(q.jobs.len()) } else { 0 };
        drop(q);
        for _ in 0..wake {
            self.shared.ready.notify_one();
        }
    }

    /// Jobs waiting for a thread.
    pub fn queued(&self) -> usize {
        self.shared.lock().jobs.len()
    }

    /// Jobs running now.
    pub fn executing(&self) -> usize {
        self.shared.executing.load(Ordering::Acquire)
    }

    /// Stop: running jobs finish and report; queued jobs are dropped without an outcome.
    /// Returns once every thread has exited. Dropping the executor does the same.
    pub fn shutdown(self) {
        drop(self)
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        {
            let mut q = self.shared.lock();
            q.shutdown = true;
            q.jobs.clear();
        }
        self.shared.ready.notify_all();
        let me = std::thread::current().id();
        for t in self.threads.drain(..) {
            // A job that drops its own executor must not wait for itself.
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}

impl fmt::Debug for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Executor")
            .field("threads", &self.threads.len())
            .field("queued", &self.queued())
            .field("executing", &self.executing())
            .finish()
    }
}

/// What every thread shares and never changes.
struct Env {
    registry: Registry,
    worker_name: String,
    local_dir: PathBuf,
    outcomes: UnboundedSender<JobOutcome>,
    direct: Option<DirectReport>,
}

fn run_thread(thread: usize, shared: &Shared, env: &Env) {
    loop {
        let job = {
            let mut q = shared.lock();
            loop {
                if q.shutdown {
                    return;
                }
                if !q.paused
                    && let Some(job) = q.jobs.pop_front()
                {
                    // Counted under the lock so queued() + executing() never misses a job.
                    shared.executing.fetch_add(1, Ordering::AcqRel);
                    break job;
                }
                q.idle += 1;
                q = shared.ready.wait(q).unwrap_or_else(|p| p.into_inner());
                q.idle -= 1;
            }
        };
        let start = Instant::now();
        let result = run_job(thread, env, &job);
        let duration = start.elapsed();
        shared.executing.fetch_sub(1, Ordering::AcqRel);
        let outcome = JobOutcome {
            task: job.task,
            result,
            started: start,
            duration,
            thread: thread as u32,
        };
        let outcome = match &env.direct {
            Some(direct) => {
                let queued = !shared.lock().jobs.is_empty();
                direct(outcome, queued)
            }
            None => Some(outcome),
        };
        if let Some(outcome) = outcome {
            // A closed channel means the worker is going away; the outcome has no one to go to.
            let _ = env.outcomes.send(outcome);
        }
    }
}

fn run_job(thread: usize, env: &Env, job: &Job) -> Result<Bytes, TaskErrorMsg> {
    match &job.kind {
        TaskKindMsg::Function { name, args } => {
            let Some(f) = env.registry.get(name) else {
                return Err(unknown_function(name, &env.registry));
            };
            let ctx = TaskContext {
                key: &job.key,
                worker_name: &env.worker_name,
                thread,
            };
            match catch_unwind(AssertUnwindSafe(|| f(&ctx, args, &job.inputs))) {
                Ok(Ok(bytes)) => Ok(bytes),
                Ok(Err(message)) => Err(TaskErrorMsg {
                    kind: ErrorKindMsg::Failed,
                    message,
                }),
                Err(payload) => Err(panicked(&*payload)),
            }
        }
        TaskKindMsg::Command(cmd) => catch_unwind(AssertUnwindSafe(|| {
            run_command(cmd, Path::new(&env.local_dir))
        }))
        .unwrap_or_else(|payload| Err(panicked(&*payload))),
    }
}

fn unknown_function(name: &str, registry: &Registry) -> TaskErrorMsg {
    TaskErrorMsg {
        kind: ErrorKindMsg::UnknownFunction,
        message: format!(
            "unknown function '{name}' (this worker has: {})",
            registry.names().join(", ")
        ),
    }
}

fn panicked(payload: &(dyn Any + Send)) -> TaskErrorMsg {
    let text = if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.as_str()
    } else {
        "<non-string panic payload>"
    };
    TaskErrorMsg {
        kind: ErrorKindMsg::Panicked,
        message: format!("task panicked: {text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::functions::{decode_i64, encode_i64};
    use std::collections::HashSet;
    use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

    fn start(nthreads: usize, registry: Registry) -> (Executor, UnboundedReceiver<JobOutcome>) {
        let (tx, rx) = unbounded_channel();
        (
            Executor::start(nthreads, registry, "w1".into(), std::env::temp_dir(), tx),
            rx,
        )
    }

    fn func(task: u64, name: &str, args: &[u8], inputs: Vec<Bytes>) -> Job {
        Job {
            task: TaskId(task),
            key: format!("{name}-{task}"),
            kind: TaskKindMsg::Function {
                name: name.into(),
                args: args.to_vec(),
            },
            inputs,
        }
    }

    #[test]
    fn runs_functions_and_reports_outcomes() {
        let (ex, mut rx) = start(2, Registry::stock());
        ex.submit(func(1, "inc", &[], vec![encode_i64(41)]));
        let o = rx.blocking_recv().unwrap();
        assert_eq!(o.task, TaskId(1));
        assert_eq!(decode_i64(&o.result.unwrap()).unwrap(), 42);
        ex.shutdown();
    }

    #[test]
    fn function_error_is_failed() {
        let (ex, mut rx) = start(1, Registry::stock());
        ex.submit(func(1, "fail", b"bad input", vec![]));
        let e = rx.blocking_recv().unwrap().result.unwrap_err();
        assert_eq!(
            e,
            TaskErrorMsg {
                kind: ErrorKindMsg::Failed,
                message: "bad input".into()
            }
        );
    }

    #[test]
    fn panic_is_reported_and_the_thread_survives() {
        // One thread: the job after the panic can only run if that thread lived.
        let (ex, mut rx) = start(1, Registry::stock());
        ex.submit(func(1, "panic", b"oh no", vec![]));
        ex.submit(func(2, "inc", &encode_i64(1), vec![]));
        let mut reg = Registry::new();
        reg.register("boxed", |_, _, _| std::panic::panic_any(17u32));
        let e = rx.blocking_recv().unwrap();
        assert_eq!(e.task, TaskId(1));
        assert_eq!(
            e.result.unwrap_err(),
            TaskErrorMsg {
                kind: ErrorKindMsg::Panicked,
                message: "task panicked: oh no".into()
            }
        );
        let o = rx.blocking_recv().unwrap();
        assert_eq!(
            (o.task, decode_i64(&o.result.unwrap()).unwrap()),
            (TaskId(2), 2)
        );

        let (ex2, mut rx2) = start(1, reg);
        ex2.submit(func(3, "boxed", &[], vec![]));
        assert_eq!(
            rx2.blocking_recv().unwrap().result.unwrap_err().message,
            "task panicked: <non-string panic payload>"
        );
        drop(ex);
    }

    #[test]
    fn unknown_function_lists_names() {
        let mut reg = Registry::new();
        reg.register("b", |_, _, _| Ok(Bytes::new()))
            .register("a", |_, _, _| Ok(Bytes::new()));
        let (ex, mut rx) = start(1, reg);
        ex.submit(func(1, "x", &[], vec![]));
        assert_eq!(
            rx.blocking_recv().unwrap().result.unwrap_err(),
            TaskErrorMsg {
                kind: ErrorKindMsg::UnknownFunction,
                message: "unknown function 'x' (this worker has: a, b)".into()
            }
        );
    }

    #[test]
    fn context_has_key_worker_and_thread_index() {
        let mut reg = Registry::new();
        reg.register("ctx", |c, _, _| {
            Ok(Bytes::from(format!(
                "{} {} {}",
                c.key, c.worker_name, c.thread
            )))
        });
        let (ex, mut rx) = start(1, reg);
        ex.submit(func(5, "ctx", &[], vec![]));
        assert_eq!(
            &rx.blocking_recv().unwrap().result.unwrap()[..],
            b"ctx-5 w1 0"
        );
    }

    #[test]
    fn threads_are_numbered_and_run_in_parallel() {
        // Both jobs wait at a barrier: they can only finish if two threads run them at once.
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let mut reg = Registry::new();
        reg.register("meet", move |c, _, _| {
            barrier.wait();
            Ok(Bytes::from(vec![c.thread as u8]))
        });
        let (ex, mut rx) = start(2, reg);
        ex.submit_all([func(1, "meet", &[], vec![]), func(2, "meet", &[], vec![])]);
        let threads: HashSet<u8> = (0..2)
            .map(|_| rx.blocking_recv().unwrap().result.unwrap()[0])
            .collect();
        assert_eq!(threads, HashSet::from([0, 1]));
    }

    #[test]
    fn commands_run_in_local_dir() {
        let (ex, mut rx) = start(1, Registry::new());
        ex.submit(Job {
            task: TaskId(1),
            key: "cmd-1".into(),
            kind: TaskKindMsg::Command(taskwire_protocol::CommandMsg {
                argv: vec!["sh".into(), "-c".into(), "echo hi; exit 4".into()],
                ..Default::default()
            }),
            inputs: vec![],
        });
        let e = rx.blocking_recv().unwrap().result.unwrap_err();
        assert!(
            matches!(
                e.kind,
                ErrorKindMsg::Command {
                    exit_code: Some(4),
                    ..
                }
            ),
            "{e:?}"
        );
    }

    /// A gate that holds a job running until the test opens it.
    fn gated() -> (Registry, Arc<(Mutex<bool>, Condvar)>) {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let g = gate.clone();
        let mut reg = Registry::stock();
        reg.register("wait", move |_, _, _| {
            let mut open = g.0.lock().unwrap();
            while !*open {
                open = g.1.wait(open).unwrap();
            }
            Ok(Bytes::new())
        });
        (reg, gate)
    }

    fn open(gate: &(Mutex<bool>, Condvar)) {
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
    }

    #[test]
    fn cancel_removes_a_queued_job_only() {
        let (reg, gate) = gated();
        let (ex, mut rx) = start(1, reg);
        ex.submit(func(1, "wait", &[], vec![]));
        ex.submit(func(2, "noop", &[], vec![]));
        ex.submit(func(3, "noop", &[], vec![]));
        while ex.executing() == 0 {
            std::thread::yield_now();
        }
        assert_eq!((ex.queued(), ex.executing()), (2, 1));
        assert!(!ex.cancel(TaskId(1)), "running job is not cancelled");
        assert!(ex.cancel(TaskId(2)));
        assert!(!ex.cancel(TaskId(2)), "already removed");
        assert!(!ex.cancel(TaskId(99)));
        assert_eq!(ex.queued(), 1);
        open(&gate);
        let done: Vec<TaskId> = (0..2).map(|_| rx.blocking_recv().unwrap().task).collect();
        assert_eq!(done, [TaskId(1), TaskId(3)]);
        ex.shutdown();
        assert!(rx.try_recv().is_err(), "cancelled job produced no outcome");
    }

    #[test]
    fn shutdown_finishes_running_jobs_and_drops_queued_ones() {
        let (reg, gate) = gated();
        let (ex, mut rx) = start(1, reg);
        ex.submit(func(1, "wait", &[], vec![]));
        ex.submit(func(2, "noop", &[], vec![]));
        while ex.executing() == 0 {
            std::thread::yield_now();
        }
        let opener = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            open(&gate);
        });
        ex.shutdown();
        opener.join().unwrap();
        assert_eq!(rx.blocking_recv().unwrap().task, TaskId(1));
        // Every sender is gone with the threads: the channel ends.
        assert!(rx.blocking_recv().is_none());
    }

    #[test]
    fn ten_thousand_noops_on_two_threads_come_back_exactly_once() {
        let (ex, mut rx) = start(2, Registry::stock());
        let n = 10_000u64;
        for t in 0..n {
            ex.submit(func(t, "noop", &[], vec![]));
        }
        let mut seen = HashSet::new();
        for _ in 0..n {
            let o = rx.blocking_recv().unwrap();
            assert!(o.result.unwrap().is_empty());
            assert!(seen.insert(o.task), "{} reported twice", o.task);
        }
        assert_eq!(seen.len(), n as usize);
        assert_eq!((ex.queued(), ex.executing()), (0, 0));
        ex.shutdown();
        assert!(rx.blocking_recv().is_none());
    }

    #[test]
    fn quick_functions_run_here_only_on_an_idle_executor() {
        let (reg, gate) = gated();
        let (ex, mut rx) = start(1, reg);
        // Quick and idle: runs on this thread, as thread 0; nothing goes to the channel.
        let o = ex
            .run_here(&func(1, "inc", &encode_i64(1), vec![]))
            .unwrap();
        assert_eq!(
            (o.task, decode_i64(&o.result.unwrap()).unwrap()),
            (TaskId(1), 2)
        );
        // A panic is caught here too.
        let e = ex.run_here(&func(2, "panic", b"boom", vec![])).unwrap();
        assert_eq!(
            e.result.unwrap_err(),
            TaskErrorMsg {
                kind: ErrorKindMsg::Panicked,
                message: "task panicked: boom".into()
            }
        );
        // Not quick: not run.
        assert!(ex.run_here(&func(3, "sleep", &[], vec![])).is_none());
        // A job running: not run, so the quick one overtakes nothing.
        ex.submit(func(4, "wait", &[], vec![]));
        while ex.executing() == 0 {
            std::thread::yield_now();
        }
        assert!(ex.run_here(&func(5, "inc", &[], vec![])).is_none());
        open(&gate);
        assert_eq!(rx.blocking_recv().unwrap().task, TaskId(4));
        // Paused: not run.
        ex.set_paused(true);
        assert!(ex.run_here(&func(6, "noop", &[], vec![])).is_none());
        ex.set_paused(false);
        assert!(ex.run_here(&func(7, "noop", &[], vec![])).is_some());
        ex.shutdown();
        assert!(rx.blocking_recv().is_none(), "nothing else reported");
    }

    #[test]
    fn direct_report_takes_outcomes_and_can_hand_them_back() {
        let (tx, mut rx) = unbounded_channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let direct: DirectReport = {
            let seen = seen.clone();
            // Takes task 1, hands task 2 back to the channel.
            Arc::new(move |o: JobOutcome, queued| {
                seen.lock().unwrap().push((o.task, queued));
                (o.task != TaskId(1)).then_some(o)
            })
        };
        let ex = Executor::start_reporting(
            1,
            Registry::stock(),
            "w1".into(),
            std::env::temp_dir(),
            tx,
            Some(direct),
        );
        ex.submit(func(1, "noop", &[], vec![]));
        ex.submit(func(2, "noop", &[], vec![]));
        assert_eq!(rx.blocking_recv().unwrap().task, TaskId(2));
        ex.shutdown();
        assert!(rx.blocking_recv().is_none());
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1], (TaskId(2), false));
    }

    #[test]
    fn executor_survives_a_closed_outcome_channel() {
        let (ex, rx) = start(1, Registry::stock());
        drop(rx);
        ex.submit(func(1, "noop", &[], vec![]));
        ex.shutdown();
    }
}
