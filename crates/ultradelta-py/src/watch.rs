//! Long work (compress, compress_many, apply, verify, evaluate) on a thread of its own while the calling Python thread watches it: the
//! stages' progress go to the caller's callback, the facade's notes to the `ultradelta` logger and the result, and
//! Ctrl-C (or an exception raised by the callback) cancels the work between two tensors. Without this the GIL would
//! be released for the whole run and Python would see neither a signal nor any progress until it ended.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use pyo3::prelude::*;
use ultradelta::Progress;

/// How often the watching thread wakes while a stage advances: the callback's rate and the latency of Ctrl-C
/// (plus, after it, the time the work takes to reach the next tensor).
const POLL: Duration = Duration::from_millis(100);

/// What the work reports, read by the watching thread.
#[derive(Default)]
pub(crate) struct Watched {
    state: Mutex<State>,
    /// Wakes the watcher (something to pass on) and the work (the watcher has seen a stage begin).
    wake: Condvar,
    /// Units done in the stage under way.
    done: AtomicU64,
    cancel: AtomicBool,
}

#[derive(Default)]
struct State {
    /// The stage under way and its total.
    stage: Option<(String, u64)>,
    /// Stages that ended since the watcher last looked, with their totals.
    ended: Vec<(String, u64)>,
    /// Notes not yet passed on.
    notes: Vec<String>,
    /// Stages begun so far, and how many of them the watcher has passed on: a stage's work starts only once the
    /// callback has heard of it, so a callback that raises at a stage's start stops it before its first tensor.
    begun: u64,
    seen: u64,
    /// The work has returned.
    finished: bool,
}

impl State {
    fn news(&self) -> bool {
        self.finished || self.begun > self.seen || !self.notes.is_empty() || !self.ended.is_empty()
    }

    /// What the watcher passes on: the notes and ended stages (taken), the stage under way and the counts.
    fn take_news(&mut self) -> State {
        State {
            stage: self.stage.clone(),
            ended: std::mem::take(&mut self.ended),
            notes: std::mem::take(&mut self.notes),
            ..*self
        }
    }
}

/// A lock that a panic elsewhere does not make unusable (the data are plain values).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Watched {
    fn post(&self, change: impl FnOnce(&mut State)) -> MutexGuard<'_, State> {
        let mut st = lock(&self.state);
        change(&mut st);
        self.wake.notify_all();
        st
    }
}

impl Progress for Watched {
    fn begin(&self, stage: &str, total: u64) {
        let mut st = self.post(|st| {
            st.stage = Some((stage.to_string(), total));
            st.begun += 1;
        });
        self.done.store(0, Ordering::Relaxed);
        let me = st.begun;
        while st.seen < me {
            st = self
                .wake
                .wait(st)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
    fn advance(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
    fn note(&self, message: &str) {
        drop(self.post(|st| st.notes.push(message.to_string())));
    }
    fn end(&self) {
        drop(self.post(|st| {
            if let Some(stage) = st.stage.take() {
                st.ended.push(stage);
            }
        }));
    }
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// The watcher's side: passes on what happened since it last looked.
struct Reporter<'py, 'a> {
    callback: Option<&'a Bound<'py, PyAny>>,
    logger: Bound<'py, PyAny>,
    /// The last `(stage, done, total)` given to the callback.
    last: Option<(String, u64, u64)>,
    notes: Vec<String>,
}

impl Reporter<'_, '_> {
    fn call(&mut self, stage: String, done: u64, total: u64) -> PyResult<()> {
        let now = (stage, done.min(total), total);
        if self.last.as_ref() == Some(&now) {
            return Ok(());
        }
        if let Some(cb) = self.callback {
            cb.call1(now.clone())?;
        }
        self.last = Some(now);
        Ok(())
    }

    /// Notes to the logger (and the list returned with the result), then every stage that ended (done = total),
    /// then the stage under way.
    fn report(&mut self, news: State, done: u64) -> PyResult<()> {
        for note in news.notes {
            self.logger.call_method1("info", ("%s", note.as_str()))?;
            self.notes.push(note);
        }
        for (stage, total) in news.ended {
            self.call(stage, total, total)?;
        }
        if let Some((stage, total)) = news.stage {
            self.call(stage, done, total)?;
        }
        Ok(())
    }
}

/// Runs `work` on its own thread and watches it from this one (see the module's documentation). Returns its
/// result and the notes it made. An exception from the callback or a signal handler (Ctrl-C's
/// `KeyboardInterrupt`) cancels the work and is raised once the work has stopped: what it had started to write is
/// removed, unless it had already finished.
pub(crate) fn run<T: Send + 'static>(
    py: Python<'_>,
    callback: Option<&Bound<'_, PyAny>>,
    work: impl FnOnce(&Watched) -> Result<T, ultradelta::Error> + Send + 'static,
) -> PyResult<(T, Vec<String>)> {
    if let Some(cb) = callback {
        if !cb.is_callable() {
            return Err(crate::invalid(format!(
                "option progress: expected a callable progress(stage, done, total) or None, got {}",
                cb.get_type().name()?
            )));
        }
    }
    // Everything that can fail before the work starts: once started, it must be watched to its end.
    let mut reporter = Reporter {
        callback,
        logger: py
            .import("logging")?
            .call_method1("getLogger", ("ultradelta",))?,
        last: None,
        notes: Vec::new(),
    };
    let watched = Arc::new(Watched::default());
    let w = Arc::clone(&watched);
    let worker = std::thread::Builder::new()
        .name("ultradelta".into())
        .spawn(move || {
            // Says so when the work returns or panics: the watcher waits for it.
            struct Finished(Arc<Watched>);
            impl Drop for Finished {
                fn drop(&mut self) {
                    drop(self.0.post(|st| st.finished = true));
                }
            }
            let finished = Finished(w);
            work(&finished.0)
        })
        .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("cannot start a thread: {e}")))?;
    let mut failure: Option<PyErr> = None;
    loop {
        let news = py.detach(|| {
            let st = lock(&watched.state);
            let (mut st, _) = watched
                .wake
                .wait_timeout_while(st, POLL, |st| !st.news())
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            st.take_news()
        });
        let (begun, finished) = (news.begun, news.finished);
        if failure.is_none() {
            let done = watched.done.load(Ordering::Relaxed);
            if let Err(e) = reporter
                .report(news, done)
                .and_then(|()| py.check_signals())
            {
                watched.cancel.store(true, Ordering::Relaxed);
                failure = Some(e);
            }
        }
        // The stages passed on may start (cancelled, if the callback or a signal said so).
        drop(watched.post(|st| st.seen = begun));
        if finished {
            break;
        }
    }
    let result = py
        .detach(|| worker.join())
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    if let Some(e) = failure {
        return Err(e);
    }
    result.map(|t| (t, reporter.notes)).map_err(crate::to_py)
}
