//! Progress of long work (reading a big file, a catalog import, start-up
//! migrations, a partition's restore) shown the way each reader expects it:
//! an `indicatif` bar when stderr is a terminal, and otherwise, for CI logs
//! and supervisors, an `info` log line every [`LOG_EVERY`] while the work
//! lasts. Work shorter than that logs nothing here, so short runs keep clean
//! logs; work that did log progress ends with a closing line.
//!
//! A [`Progress`] is shared by reference across threads; callers count per
//! chunk of work (a block of a file, a batch of rows), never per item, as a
//! count is an atomic add and a bar may redraw.

use indicatif::{
    HumanBytes, HumanCount, HumanDuration, MultiProgress, ProgressBar, ProgressDrawTarget,
    ProgressStyle,
};
use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often a progress line is logged when stderr is no terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// Redraws per second of a terminal bar, and its spinner's tick.
const BAR_HZ: u8 = 8;
const BAR_TICK: Duration = Duration::from_millis(125);

/// What is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Bytes, shown as KiB/MiB/GiB.
    Bytes,
    /// Things, named by the plural noun shown after the count.
    Count(&'static str),
}

/// Progress of one piece of long work (see the module docs). Dropping it
/// without [`Progress::finish`] (an error path) removes the bar and logs no
/// closing line.
pub struct Progress {
    /// Holds the position, length, stage and elapsed time in every mode; in
    /// log mode it is hidden and the ticker reads it.
    bar: ProgressBar,
    meta: Arc<Meta>,
    /// Log mode: the thread that logs the progress lines.
    ticker: Option<Ticker>,
    /// Terminal mode: the bar is one of [`bars`].
    on_terminal: bool,
}

/// What a log line names, besides the bar's state.
struct Meta {
    task: String,
    unit: Unit,
    /// When the work started (the bar's clock restarts with each step).
    started: Instant,
}

impl Meta {
    fn new(task: String, unit: Unit) -> Arc<Meta> {
        Arc::new(Meta {
            task,
            unit,
            started: Instant::now(),
        })
    }
}

impl Progress {
    /// Progress of `task` (what a person would call the work, e.g.
    /// `"sessionize"`), with `total` units to do if known: a bar on a
    /// terminal, log lines every [`LOG_EVERY`] otherwise.
    pub fn start(task: impl Into<String>, total: Option<u64>, unit: Unit) -> Progress {
        if std::io::stderr().is_terminal() {
            Progress::on_terminal(task.into(), total, unit)
        } else {
            Progress::logged(task.into(), total, unit, LOG_EVERY)
        }
    }

    /// Progress that shows nothing (for callers that run the same work
    /// where nobody waits on it, such as an HTTP request).
    pub fn hidden() -> Progress {
        Progress {
            bar: ProgressBar::hidden(),
            meta: Meta::new(String::new(), Unit::Count("")),
            ticker: None,
            on_terminal: false,
        }
    }

    fn on_terminal(task: String, total: Option<u64>, unit: Unit) -> Progress {
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::hidden())
            .with_style(bar_style(total.is_some(), unit))
            .with_prefix(task.clone());
        ACTIVE_BARS.fetch_add(1, Ordering::SeqCst);
        let bar = bars().add(bar);
        bar.enable_steady_tick(BAR_TICK);
        Progress {
            bar,
            meta: Meta::new(task, unit),
            ticker: None,
            on_terminal: true,
        }
    }

    fn logged(task: String, total: Option<u64>, unit: Unit, every: Duration) -> Progress {
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::hidden());
        let meta = Meta::new(task, unit);
        let ticker = Ticker::spawn(every, {
            let (bar, meta) = (bar.clone(), Arc::clone(&meta));
            move || {
                tracing::info!(
                    task = %meta.task,
                    done = bar.position(),
                    total = bar.length(),
                    elapsed_s = meta.started.elapsed().as_secs(),
                    "{}",
                    progress_line(&meta, &bar)
                );
            }
        });
        Progress {
            bar,
            meta,
            ticker: Some(ticker),
            on_terminal: false,
        }
    }

    /// Adds `n` units done.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Sets the units done.
    pub fn set_position(&self, done: u64) {
        self.bar.set_position(done);
    }

    /// Names the step under way (a file, a migration, "parsing"), shown
    /// beside the count.
    pub fn set_stage(&self, stage: impl Into<String>) {
        self.bar.set_message(stage.into());
    }

    /// Starts step `stage` of `total` units, counted (and timed, for its
    /// rate) from zero again.
    pub fn restart(&self, stage: impl Into<String>, total: Option<u64>) {
        self.bar.reset();
        if self.on_terminal {
            self.bar
                .set_style(bar_style(total.is_some(), self.meta.unit));
        }
        match total {
            Some(total) => self.bar.set_length(total),
            None => self.bar.unset_length(),
        }
        self.bar.set_message(stage.into());
    }

    /// Prints `line` on stderr, above the bar if one is shown.
    pub fn note(&self, line: &str) {
        if self.on_terminal {
            bars().suspend(|| eprintln!("{line}"));
        } else {
            eprintln!("{line}");
        }
    }

    /// The work is done: the bar goes away; in log mode, if progress was
    /// logged, a closing line says what was done and in how long.
    pub fn finish(mut self) {
        if let Some(ticker) = self.ticker.take() {
            if ticker.stop() > 0 {
                tracing::info!(
                    task = %self.meta.task,
                    done = self.bar.position(),
                    elapsed_ms = self.meta.started.elapsed().as_millis() as u64,
                    "{}",
                    closing_line(&self.meta, &self.bar)
                );
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.stop();
        }
        if self.on_terminal {
            self.bar.finish_and_clear();
            bars().remove(&self.bar);
            ACTIVE_BARS.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn bar_style(has_total: bool, unit: Unit) -> ProgressStyle {
    // The bar takes the width left, so a line never wraps on a narrow terminal.
    let template = match (has_total, unit) {
        (true, Unit::Bytes) => "{spinner} {prefix}: {msg} [{wide_bar}] {bytes}/{total_bytes} ({binary_bytes_per_sec}, eta {eta})".to_string(),
        (true, Unit::Count(noun)) => {
            format!("{{spinner}} {{prefix}}: {{msg}} [{{wide_bar}}] {{human_pos}}/{{human_len}} {noun} (eta {{eta}})")
        }
        (false, Unit::Bytes) => "{spinner} {prefix}: {msg} {bytes} ({binary_bytes_per_sec}, {elapsed})".to_string(),
        (false, Unit::Count(noun)) => {
            format!("{{spinner}} {{prefix}}: {{msg}} {{human_pos}} {noun} ({{elapsed}})")
        }
    };
    ProgressStyle::with_template(&template)
        .expect("valid progress template")
        .progress_chars("=> ")
}

/// `amount` in the unit's words: `12.0 MiB`, `1,200 rows`.
fn amount(unit: Unit, amount: u64) -> String {
    match unit {
        Unit::Bytes => HumanBytes(amount).to_string(),
        Unit::Count(noun) => format!("{} {noun}", HumanCount(amount)),
    }
}

/// A progress line: `sessionize: parsing 45% (120.0 MiB of 266.0 MiB,
/// 80.0 MiB/s, 6 seconds)`: the rate is the step's, the time the work's.
fn progress_line(meta: &Meta, bar: &ProgressBar) -> String {
    let done = bar.position();
    let rate = done as f64 / bar.elapsed().as_secs_f64().max(1e-3);
    let elapsed = meta.started.elapsed();
    let stage = bar.message();
    let stage = if stage.is_empty() {
        String::new()
    } else {
        format!(" {stage}")
    };
    let rate = match meta.unit {
        Unit::Bytes => format!("{}/s", HumanBytes(rate as u64)),
        Unit::Count(_) => format!("{rate:.0}/s"),
    };
    match bar.length() {
        Some(total) => format!(
            "{}:{stage} {}% ({} of {}, {rate}, {})",
            meta.task,
            done.saturating_mul(100).checked_div(total).unwrap_or(100),
            amount(meta.unit, done),
            amount(meta.unit, total),
            HumanDuration(elapsed),
        ),
        None => format!(
            "{}:{stage} {} ({rate}, {})",
            meta.task,
            amount(meta.unit, done),
            HumanDuration(elapsed),
        ),
    }
}

/// The closing line: `sessionize: done, 266.0 MiB in 3 seconds`.
fn closing_line(meta: &Meta, bar: &ProgressBar) -> String {
    format!(
        "{}: done, {} in {}",
        meta.task,
        amount(meta.unit, bar.position()),
        HumanDuration(meta.started.elapsed()),
    )
}

/// A thread that runs a line every `every` until stopped.
struct Ticker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: JoinHandle<u64>,
}

impl Ticker {
    fn spawn(every: Duration, mut line: impl FnMut() + Send + 'static) -> Ticker {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        // The lines go to the caller's subscriber, also when it is only the
        // caller thread's default (as in tests).
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let thread = std::thread::Builder::new()
            .name("progress".into())
            .spawn({
                let stop = Arc::clone(&stop);
                move || {
                    let (stopped, wake) = &*stop;
                    let mut lines = 0;
                    let mut guard = stopped.lock().expect("progress lock");
                    loop {
                        let deadline = Instant::now() + every;
                        // Woken early (spuriously) it waits out the rest.
                        while !*guard {
                            let left = deadline.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                break;
                            }
                            guard = wake.wait_timeout(guard, left).expect("progress lock").0;
                        }
                        if *guard {
                            return lines;
                        }
                        drop(guard);
                        tracing::dispatcher::with_default(&dispatch, &mut line);
                        lines += 1;
                        guard = stopped.lock().expect("progress lock");
                    }
                }
            })
            .expect("spawning the progress thread");
        Ticker { stop, thread }
    }

    /// Stops the thread; returns how many lines it ran.
    fn stop(self) -> u64 {
        let (stopped, wake) = &*self.stop;
        *stopped.lock().expect("progress lock") = true;
        wake.notify_all();
        self.thread.join().unwrap_or(0)
    }
}

/// Every terminal bar, drawn together on stderr; log lines written while
/// one is shown go above the bars ([`LogWriter`]).
fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(BAR_HZ)))
}

/// Terminal bars shown now: log lines take the plain path when there are none.
static ACTIVE_BARS: AtomicUsize = AtomicUsize::new(0);

/// stderr for log lines: while a terminal bar is shown, each line is
/// written with the bars lifted and redrawn below it, so neither garbles
/// the other. Used by [`crate::telemetry::init`].
#[derive(Clone, Copy, Debug, Default)]
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if ACTIVE_BARS.load(Ordering::SeqCst) == 0 {
            return std::io::stderr().write(buf);
        }
        bars().suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log lines of `work` with their arrival times, in log mode
    /// (stderr is no terminal in any case here).
    fn logged_lines(work: impl FnOnce()) -> Vec<(Instant, String)> {
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<(Instant, String)>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let line = String::from_utf8_lossy(buf).trim_end().to_string();
                self.0.lock().unwrap().push((Instant::now(), line));
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer({
                let lines = lines.clone();
                move || lines.clone()
            })
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .finish();
        tracing::subscriber::with_default(subscriber, work);
        let lines = lines.0.lock().unwrap().clone();
        lines
    }

    #[test]
    fn a_progress_line_says_the_step_its_share_the_amounts_and_the_rate() {
        let bar = ProgressBar::with_draw_target(Some(4 << 20), ProgressDrawTarget::hidden());
        bar.set_position(1 << 20);
        bar.set_message("parsing");
        let meta = Meta::new("sessionize".into(), Unit::Bytes);
        let line = progress_line(&meta, &bar);
        assert!(
            line.starts_with("sessionize: parsing 25% (1.00 MiB of 4.00 MiB, "),
            "{line}"
        );
        assert!(
            line.contains("MiB/s, ") || line.contains("GiB/s, "),
            "{line}"
        );

        let rows = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        rows.set_position(12_345);
        let meta = Meta::new("restore partition 3".into(), Unit::Count("raw rows"));
        let line = progress_line(&meta, &rows);
        assert!(
            line.starts_with("restore partition 3: 12,345 raw rows ("),
            "{line}"
        );
        assert_eq!(
            closing_line(&meta, &rows),
            format!(
                "restore partition 3: done, 12,345 raw rows in {}",
                HumanDuration(meta.started.elapsed())
            )
        );
    }

    #[test]
    fn an_empty_total_is_complete_rather_than_a_division_by_zero() {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
        let meta = Meta::new("migrations".into(), Unit::Count("migrations"));
        assert!(progress_line(&meta, &bar)
            .starts_with("migrations: 100% (0 migrations of 0 migrations"));
    }

    #[test]
    fn long_work_logs_a_line_every_interval_and_a_closing_line() {
        let every = Duration::from_millis(40);
        let started = Instant::now();
        let lines = logged_lines(|| {
            let progress =
                Progress::logged("import".into(), Some(1_000), Unit::Count("rows"), every);
            progress.set_stage("writing videos");
            for _ in 0..10 {
                std::thread::sleep(every / 2);
                progress.inc(100);
            }
            std::thread::sleep(every * 2);
            progress.finish();
        });
        let elapsed = started.elapsed();
        let (closing, progress) = lines.split_last().expect("lines");
        assert!(
            closing.1.ends_with(&format!(
                "import: done, 1,000 rows in {}",
                closing.1.rsplit(" in ").next().unwrap()
            )),
            "{lines:?}"
        );
        assert!(closing.1.contains("INFO"), "{closing:?}");
        // At least a line per interval of a run that took 7 of them (fewer
        // only if the machine starved the ticker), never more.
        assert!(progress.len() >= 2, "{lines:?}");
        assert!(
            progress.len() as u32 <= elapsed.as_millis() as u32 / every.as_millis() as u32,
            "{lines:?}"
        );
        for (line, next) in progress.iter().zip(&progress[1..]) {
            assert!(next.0.duration_since(line.0) >= every, "{lines:?}");
        }
        for (_, line) in progress {
            assert!(line.contains("import: writing videos "), "{line}");
            assert!(line.contains(" rows of 1,000 rows, "), "{line}");
        }
        assert!(
            progress
                .last()
                .unwrap()
                .1
                .contains("import: writing videos 100% (1,000 rows"),
            "{lines:?}"
        );
    }

    #[test]
    fn short_work_logs_nothing() {
        let lines = logged_lines(|| {
            let progress = Progress::logged("sessionize".into(), Some(10), Unit::Bytes, LOG_EVERY);
            progress.inc(10);
            progress.finish();
        });
        assert!(lines.is_empty(), "{lines:?}");
    }

    #[test]
    fn work_dropped_unfinished_logs_no_closing_line() {
        let every = Duration::from_millis(20);
        let lines = logged_lines(|| {
            let progress = Progress::logged("restore".into(), None, Unit::Count("rows"), every);
            std::thread::sleep(every * 3);
            drop(progress);
        });
        assert!(!lines.is_empty());
        assert!(
            lines
                .iter()
                .all(|(_, line)| !line.contains("restore: done")),
            "{lines:?}"
        );
    }

    #[test]
    fn a_restarted_step_counts_from_zero_towards_its_own_total() {
        let progress = Progress::logged("sessionize".into(), Some(100), Unit::Bytes, LOG_EVERY);
        progress.inc(100);
        progress.restart("parsing", Some(50));
        assert_eq!(progress.bar.position(), 0);
        assert_eq!(progress.bar.length(), Some(50));
        assert_eq!(progress.bar.message(), "parsing");
        progress.finish();
    }
}
