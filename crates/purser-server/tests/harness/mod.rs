//! Starts the real app on port 0 with a fresh data directory.

#![allow(dead_code)]

use purser_client::{Charge, Client, Cost, NewAccount, Reply};
use purser_server::App;
use purser_server::config::Config;

pub const ADMIN_KEY: &str = "sk_test_admin_0123456789";

pub struct Server {
    pub base: String,
    /// Journal entries replayed on start, after the snapshots.
    pub replayed: u64,
    pub dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// A server with the built-in catalog and a test clock.
    pub async fn start() -> Server {
        Server::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        Server::start_in(dir, configure).await
    }

    /// (Re)starts a server on an existing data directory.
    pub async fn start_in(dir: tempfile::TempDir, configure: impl FnOnce(&mut Config)) -> Server {
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
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
        Server {
            base,
            replayed,
            dir,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// Stops the server and gives its data directory back.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
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
