//! What the broker tests share: an Apache Kafka node started on free loopback ports (optionally
//! with `SASL_SSL` and mutual-TLS listeners and the certificates they need), temporary
//! directories, and reading attribute values.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;

/// The corpus's five instrumentations (`tests/fixtures/corpus/NAME.pb`).
pub const CORPUS: [&str; 5] = [
    "openinference",
    "openllmetry",
    "otel_v2",
    "otel_v2_latest",
    "traceai",
];

/// The default evaluator set: what `evalstream eval` and `run` evaluate when the configuration
/// names none.
pub const DEFAULT_EVALUATORS: [&str; 6] = [
    "refusal",
    "pii",
    "json_valid",
    "finish_reason",
    "empty_output",
    "cost",
];

/// A temporary directory for one test, named after it.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("evalstream-kafka-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An Apache Kafka node in KRaft mode (controller and broker in one JVM) on free loopback ports,
/// its data in a directory of its own, as `scripts/lib/kafka.sh` starts it. Stopped on drop;
/// its log is kept (and its path printed) when the test failed. `scripts/install-kafka.sh`
/// installs Kafka into `target/kafka/libs`.
pub struct Broker {
    child: Option<Child>,
    port: u16,
    controller: u16,
    dir: PathBuf,
    /// Listeners besides PLAINTEXT and the controller's, with their properties (TLS, SASL).
    pub secured: Option<Secured>,
}

/// A `SASL_SSL` listener (SCRAM-SHA-512, user [`SCRAM_USER`]) and a mutual-TLS listener, with the
/// CA and certificates the test made with `openssl`.
pub struct Secured {
    /// The `SASL_SSL` listener's port.
    pub sasl_ssl: u16,
    /// The mutual-TLS listener's port.
    pub mtls: u16,
    /// The certificates.
    pub tls: Tls,
}

pub const SCRAM_USER: (&str, &str) = ("evalstream", "evalstream-scram-secret");

/// A CA, the broker's certificate for 127.0.0.1 (with its key, as the PEM keystore Kafka reads)
/// and a client certificate, made with the `openssl` command.
pub struct Tls {
    dir: PathBuf,
}

impl Tls {
    fn create(dir: &Path) -> Tls {
        let dir = dir.join("tls");
        std::fs::create_dir_all(&dir).unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl runs");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=evalstream-test-ca",
        ]);
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        for (name, subject, extensions) in [
            ("broker", "/CN=127.0.0.1", Some("san.ext")),
            ("client", "/CN=evalstream-worker", None),
        ] {
            let (key, csr, pem) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
            );
            openssl(&[
                "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj",
                subject,
            ]);
            let mut sign = vec![
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
            ];
            if let Some(ext) = extensions {
                sign.extend(["-extfile", ext]);
            }
            openssl(&sign);
        }
        openssl(&[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            "broker.key",
            "-out",
            "broker.pk8",
        ]);
        let keystore = [
            std::fs::read_to_string(dir.join("broker.pk8")).unwrap(),
            std::fs::read_to_string(dir.join("broker.pem")).unwrap(),
        ]
        .concat();
        std::fs::write(dir.join("broker-keystore.pem"), keystore).unwrap();
        Tls { dir }
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_owned()
    }
}

/// Where `scripts/install-kafka.sh` puts Kafka's jars.
pub fn kafka_libs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/kafka/libs")
}

/// `N` free loopback ports, none handed out before in this process: the kernel may give a port
/// just released again at once (Kafka was once given the same port for its broker and its
/// controller, and refused to start), so every port handed out is remembered.
pub fn free_ports<const N: usize>() -> [u16; N] {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut held = Vec::with_capacity(N);
    while held.len() < N {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            held.push((port, listener));
        }
    }
    std::array::from_fn(|i| held[i].0)
}

/// A free loopback port (see [`free_ports`]).
pub fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

pub fn java(args: &[&str]) -> Command {
    let libs = kafka_libs();
    assert!(
        libs.join(format!("kafka_2.13-{KAFKA_VERSION}.jar"))
            .exists(),
        "Kafka is not installed: run scripts/install-kafka.sh"
    );
    let mut command = Command::new("java");
    command
        .arg("-cp")
        .arg(format!("{}/*", libs.display()))
        .args(args);
    command
}

/// The Kafka version `scripts/kafka/pom.xml` installs.
pub const KAFKA_VERSION: &str = "4.4.0";

impl Broker {
    /// A new node with empty storage.
    pub fn start() -> Broker {
        Broker::start_with(false)
    }

    /// A new node that also has a `SASL_SSL` (SCRAM-SHA-512) and a mutual-TLS listener.
    pub fn start_secured() -> Broker {
        Broker::start_with(true)
    }

    fn start_with(secured: bool) -> Broker {
        static BROKERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = BROKERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = temp_dir(&format!("broker-{n}"));
        let _ = std::fs::remove_dir_all(dir.join("data"));
        let [port, controller, sasl_ssl, mtls] = free_ports();
        let secured = secured.then(|| Secured {
            sasl_ssl,
            mtls,
            tls: Tls::create(&dir),
        });
        let mut broker = Broker {
            child: None,
            port,
            controller,
            dir,
            secured,
        };
        broker.format();
        broker.run();
        broker
    }

    /// The listeners and properties past the plain ones, and the `format` arguments they need.
    fn security(&self) -> (String, String, String, Vec<String>) {
        let Some(s) = &self.secured else {
            return (String::new(), String::new(), String::new(), Vec::new());
        };
        let listeners = format!(
            ",SASL_SSL://127.0.0.1:{},MTLS://127.0.0.1:{}",
            s.sasl_ssl, s.mtls
        );
        let map = ",SASL_SSL:SASL_SSL,MTLS:SSL".to_owned();
        let properties = format!(
            "sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location={}
ssl.truststore.type=PEM
ssl.truststore.location={}
listener.name.mtls.ssl.client.auth=required
",
            s.tls.path("broker-keystore.pem"),
            s.tls.path("ca.pem")
        );
        let (user, password) = SCRAM_USER;
        let scram = vec![
            "--add-scram".to_owned(),
            format!("SCRAM-SHA-512=[name={user},password={password}]"),
        ];
        (listeners, map, properties, scram)
    }

    fn format(&self) {
        let (secured_listeners, secured_map, secured_properties, format_args) = self.security();
        let template = |file: &str| {
            std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../scripts/kafka")
                    .join(file),
            )
            .unwrap()
        };
        let properties = template("server.properties")
            .replace("@PORT@", &self.port.to_string())
            .replace("@CONTROLLER@", &self.controller.to_string())
            .replace("@DATA@", self.dir.join("data").to_str().unwrap())
            .replace("@EXTRA_LISTENERS@", &secured_listeners)
            .replace("@EXTRA_PROTOCOLS@", &secured_map)
            .replace("@EXTRA_LINES@", &secured_properties);
        std::fs::write(self.dir.join("server.properties"), properties).unwrap();
        let logging = template("log4j2.properties")
            .replace("@LOG@", self.dir.join("server.log").to_str().unwrap());
        std::fs::write(self.dir.join("log4j2.properties"), logging).unwrap();
        let properties = self.dir.join("server.properties");
        let mut format = vec![
            "kafka.tools.StorageTool",
            "format",
            "-t",
            "ZXZhbHN0cmVhbS10ZXN0cw",
            "-c",
            properties.to_str().unwrap(),
        ];
        format.extend(format_args.iter().map(String::as_str));
        let log = std::fs::File::create(self.dir.join("format.log")).unwrap();
        let status = java(&format)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cannot format {} (see format.log there)",
            self.dir.display()
        );
    }

    /// Starts the JVM on the node's storage and waits until it serves.
    fn run(&mut self) {
        let server_log = self.dir.join("server.log");
        let starts = || {
            std::fs::read_to_string(&server_log)
                .unwrap_or_default()
                .matches("Kafka Server started")
                .count()
        };
        // Each start appends to the log: wait for one more.
        let before = starts();
        let log = std::fs::File::create(self.dir.join("stdout.log")).unwrap();
        let logging = format!(
            "-Dlog4j2.configurationFile={}",
            self.dir.join("log4j2.properties").display()
        );
        let properties = self.dir.join("server.properties");
        let child = java(&[
            "-Xms128m",
            "-Xmx768m",
            &logging,
            "kafka.Kafka",
            properties.to_str().unwrap(),
        ])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("java runs");
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if starts() > before {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "Kafka did not start; see {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::client::DefaultClientContext;
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.address())
            .create()
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let topic = NewTopic::new(name, partitions as i32, TopicReplication::Fixed(1));
        let results = runtime
            .block_on(admin.create_topics(
                [&topic],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            ))
            .unwrap();
        for result in results {
            result.unwrap_or_else(|(topic, e)| panic!("cannot create topic {topic}: {e}"));
        }
    }

    /// SIGKILL: no clean shutdown; the storage stays for [`Broker::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the node again on the same storage and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("Kafka's log: {}", self.dir.join("server.log").display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Every string in a span's attributes and its events' attributes, nested ones (in arrays and
/// maps) included: what a test scans for personal data.
pub fn span_strings(span: &opentelemetry_proto::tonic::trace::v1::Span, out: &mut Vec<String>) {
    for kv in span
        .attributes
        .iter()
        .chain(span.events.iter().flat_map(|e| &e.attributes))
    {
        if let Some(v) = &kv.value {
            strings(v, out);
        }
    }
}

fn strings(value: &opentelemetry_proto::tonic::common::v1::AnyValue, out: &mut Vec<String>) {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match &value.value {
        Some(Value::StringValue(s)) => out.push(s.clone()),
        Some(Value::ArrayValue(a)) => a.values.iter().for_each(|v| strings(v, out)),
        Some(Value::KvlistValue(l)) => l
            .values
            .iter()
            .filter_map(|kv| kv.value.as_ref())
            .for_each(|v| strings(v, out)),
        _ => {}
    }
}
