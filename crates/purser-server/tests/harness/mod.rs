//! Starts the real app on port 0 with a fresh data directory.

#![allow(dead_code)]

use purser_client::{Charge, Client, Cost, NewAccount, Reply};
use purser_server::App;
use purser_server::config::Config;

pub const ADMIN_KEY: &str = "sk_test_admin_0123456789";

/// Where a server keeps its data: a directory, and on PostgreSQL a database
/// of its own (dropped with it).
pub struct Data {
    pub dir: tempfile::TempDir,
    database: Option<String>,
}

/// The `api_postgres` test binary runs this same suite on PostgreSQL.
pub fn on_postgres() -> bool {
    env!("CARGO_CRATE_NAME") == "api_postgres"
}

fn admin_url() -> String {
    std::env::var("PURSER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn database_url(name: &str) -> String {
    let admin = admin_url();
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base);
    format!("{base}/{name}")
}

/// Runs blocking PostgreSQL admin work off the async threads.
fn admin(sql: String) {
    std::thread::spawn(move || {
        let mut client =
            postgres::Client::connect(&admin_url(), postgres::NoTls).unwrap_or_else(|error| {
                panic!(
                    "PostgreSQL is required by api_postgres and is not reachable at {} ({error})",
                    admin_url()
                )
            });
        client.batch_execute(&sql).unwrap();
    })
    .join()
    .expect("PostgreSQL admin work");
}

impl Data {
    pub fn fresh() -> Data {
        let dir = tempfile::tempdir().unwrap();
        let database = on_postgres().then(|| {
            let mut bytes = [0u8; 6];
            getrandom::fill(&mut bytes).unwrap();
            let name = format!("purser_test_{}", hex::encode(bytes));
            admin(format!("CREATE DATABASE {name}"));
            name
        });
        Data { dir, database }
    }
}

impl Drop for Data {
    fn drop(&mut self) {
        if let Some(name) = self.database.take() {
            admin(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

pub struct Server {
    pub base: String,
    /// Journal entries replayed on start, after the snapshots.
    pub replayed: u64,
    pub data: Option<Data>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// A server with the built-in catalog and a test clock.
    pub async fn start() -> Server {
        Server::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> Server {
        Server::start_in(Data::fresh(), configure).await
    }

    /// (Re)starts a server on an existing data directory.
    pub async fn start_in(data: Data, configure: impl FnOnce(&mut Config)) -> Server {
        let mut config = Config {
            data_dir: data.dir.path().to_path_buf(),
            database_url: data.database.as_deref().map(database_url),
            test_clock: true,
            shards: 2,
            ..Config::default()
        };
        configure(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = App::build(config, listener, Some(ADMIN_KEY.into()))
            .await
            .expect("the app starts");
        let base = format!("http://{}", app.local_addr().unwrap());
        let replayed = app.journal_entries;
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.serve(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        // Ready when /readyz says so (on PostgreSQL the previous writer of a
        // restarted database may still be handing its lease over).
        let probe = Client::new(&base, "");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while probe.get("/readyz").await.map(|reply| reply.status).ok() != Some(200) {
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not become ready"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Server {
            base,
            replayed,
            data: Some(data),
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// Stops the server and gives its data back.
    pub async fn stop(mut self) -> Data {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.data.take().expect("data until stopped")
    }

    pub fn admin(&self) -> Client {
        Client::new(&self.base, ADMIN_KEY)
    }

    pub async fn open(&self, id: &str, tier: &str) -> Reply {
        let reply = self
            .admin()
            .create_account(&NewAccount {
                id: id.into(),
                tier: tier.into(),
                name: None,
                anchor: None,
            })
            .await
            .unwrap();
        assert_eq!(reply.status, 201, "{reply:?}");
        reply
    }

    /// Moves the test clock; returns once due work is durable.
    pub async fn advance(&self, seconds: i64) -> Reply {
        let reply = self
            .admin()
            .post(
                "/v1/test_clock/advance",
                &serde_json::json!({"seconds": seconds}),
            )
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{reply:?}");
        reply
    }

    /// A key with the given scopes.
    pub async fn key(&self, scopes: &[&str]) -> Client {
        let reply = self
            .admin()
            .post("/v1/api_keys", &serde_json::json!({"scopes": scopes}))
            .await
            .unwrap();
        assert_eq!(reply.status, 201, "{reply:?}");
        self.admin().with_key(reply.str("secret"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

pub async fn charge(api: &Client, account: &str, cost: Cost) -> Reply {
    api.charge(account, &Charge::new(cost), None).await.unwrap()
}

pub fn credits<'a>(reply: &'a Reply, field: &str) -> &'a str {
    reply.body[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {reply:?}"))
}
