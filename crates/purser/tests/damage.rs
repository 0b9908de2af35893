//! Storage faults against the real binary: a data directory is damaged the
//! way disks, operators and crashes damage them (a WAL cut short or lost,
//! rows deleted, bytes changed, a snapshot or an idempotency record
//! altered), then `purser verify` must exit non-zero naming what is wrong,
//! `purser serve` must refuse to start (no state in which it serves from
//! damage it could have found), and `serve --accept-loss` must start only
//! when what is lost is the journal's end, recording the incident. Also:
//! `purser backup` while the server takes charges, and `purser restore`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::ledger::{admin, expect_status, open_account};
use common::{ServerProcess, purser, verify};
use purser_client::{Charge, Client, Cost};

const ACCOUNTS: [&str; 3] = ["dmg-a", "dmg-b", "dmg-c"];
const TIMEOUT: Duration = Duration::from_secs(10);

/// A work directory with a `purser.toml` that snapshots often, and the data
/// directory inside it.
struct Site {
    _dir: tempfile::TempDir,
    work: PathBuf,
    data: PathBuf,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        let work = dir.path().to_path_buf();
        std::fs::write(
            work.join("purser.toml"),
            "[limits]\nsnapshot_every_entries = 40\n",
        )
        .expect("write purser.toml");
        let data = work.join("data");
        Site {
            _dir: dir,
            work,
            data,
        }
    }

    fn start(&self, name: &str) -> ServerProcess {
        ServerProcess::start(&self.data, name)
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.data.join("purser.db")).expect("open purser.db")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.data.join(name)
    }
}

async fn charge_all(client: &Client, round: &str, count: usize) {
    for i in 0..count {
        let account = ACCOUNTS[i % ACCOUNTS.len()];
        let charge = Charge::new(Cost::credits("1.5"));
        let key = format!("{round}-{i}");
        expect_status(
            client.charge(account, &charge, Some(&key)).await,
            201,
            "charge",
        );
    }
}

/// Every account's balance object, as the API shows it.
async fn balances(client: &Client) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    for account in ACCOUNTS {
        let reply = expect_status(client.balance(account).await, 200, "balance");
        all.push(reply.body);
    }
    all
}

/// History reads: they bring the history index up to every commit.
async fn read_history(client: &Client) {
    for account in ACCOUNTS {
        expect_status(
            client.transactions(account, "?limit=1").await,
            200,
            "transactions",
        );
    }
}

/// A data directory with accounts and 60 charges; the server still running.
async fn populated(site: &Site) -> (ServerProcess, Client) {
    let server = site.start("first");
    let client = admin(&server, TIMEOUT);
    for account in ACCOUNTS {
        open_account(&client, account).await;
    }
    charge_all(&client, "one", 60).await;
    read_history(&client).await;
    (server, client)
}

/// `purser serve` on the site, which must exit (non-zero) within 20 s
/// without ever serving; returns its output.
fn serve_refuses(site: &Site, extra: &[&str]) -> String {
    let output = run_for_a_while(site, extra);
    assert!(
        !output.status.success(),
        "serve exited successfully on a damaged store"
    );
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("damaged") || text.contains("damage"),
        "serve's refusal does not say the store is damaged:\n{text}"
    );
    text
}

fn run_for_a_while(site: &Site, extra: &[&str]) -> Output {
    let mut child = purser()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&site.data)
        .args(extra)
        .current_dir(&site.work)
        .env("PURSER_ADMIN_KEY", common::ADMIN_KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn purser serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().expect("poll").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect output");
            panic!(
                "serve kept running on a damaged store:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `purser verify`, which must fail; returns its report.
fn verify_fails(site: &Site) -> String {
    let output = verify(&site.data);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        !output.status.success(),
        "verify passed a damaged store:\n{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("problem: "), "no problem named:\n{text}");
    text
}

fn verify_passes(data: &Path) -> String {
    let output = verify(data);
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "verify failed:\n{text}");
    text
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_cut_by_its_last_commits_is_found_refused_and_accepted_only_when_asked() {
    let site = Site::new();
    let (server, client) = populated(&site).await;
    let kept = balances(&client).await;
    let wal = site.file("purser.db-wal");
    let cut_at = file_size(&wal);
    assert!(cut_at > 0, "the server's commits are in its WAL");
    // Acknowledged charges, then indexed (history.db saw them), then kill -9
    // and the WAL loses those commits.
    charge_all(&client, "two", 6).await;
    read_history(&client).await;
    server.kill();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .and_then(|file| file.set_len(cut_at))
        .expect("cut the WAL");
    let _ = std::fs::remove_file(site.file("purser.db-shm"));

    let report = verify_fails(&site);
    assert!(
        report.contains("acknowledged commits are lost") && report.contains("history.db"),
        "{report}"
    );
    let refusal = serve_refuses(&site, &[]);
    assert!(
        refusal.contains("acknowledged commits are lost"),
        "{refusal}"
    );
    assert!(
        refusal.contains("dmg-") || refusal.contains("entry"),
        "{refusal}"
    );
    // The operator accepts the loss: the server starts from the journal as
    // it ends, and says so in the store.
    let server = ServerProcess::start_with(&site.data, "accepted", &["--accept-loss"]);
    let client = admin(&server, TIMEOUT);
    assert_eq!(balances(&client).await, kept);
    charge_all(&client, "three", 3).await;
    read_history(&client).await;
    server.stop();
    let text = verify_passes(&site.data);
    assert!(text.contains("accepted lost commits"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_wal_is_found_and_refused() {
    let site = Site::new();
    let (server, _client) = populated(&site).await;
    server.kill();
    std::fs::remove_file(site.file("purser.db-wal")).expect("delete the WAL");
    let _ = std::fs::remove_file(site.file("purser.db-shm"));
    let report = verify_fails(&site);
    assert!(report.contains("acknowledged commits are lost"), "{report}");
    serve_refuses(&site, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_rows_deleted_are_found_as_lost() {
    let site = Site::new();
    let (server, _client) = populated(&site).await;
    server.stop();
    site.db()
        .execute_batch("DELETE FROM log WHERE pos > (SELECT MAX(pos) - 50 FROM log)")
        .expect("delete rows");
    let report = verify_fails(&site);
    assert!(report.contains("lost"), "{report}");
    serve_refuses(&site, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_inside_the_journal_is_never_accepted() {
    let site = Site::new();
    let (server, _client) = populated(&site).await;
    server.stop();
    let snapshot: i64 = site
        .db()
        .query_row("SELECT MAX(position) FROM snapshot", [], |row| row.get(0))
        .expect("a snapshot was taken");
    assert!(snapshot > 12, "snapshot at {snapshot}");
    // One row before the newest snapshot: recovery would not replay it, the
    // checks must still see it is gone.
    site.db()
        .execute("DELETE FROM log WHERE pos = 10", [])
        .expect("delete a row");
    let report = verify_fails(&site);
    assert!(
        report.contains("positions 10 to 10 are missing"),
        "{report}"
    );
    serve_refuses(&site, &[]);
    let text = serve_refuses(&site, &["--accept-loss"]);
    assert!(text.contains("positions 10 to 10 are missing"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_bytes_fail_their_checksums() {
    let site = Site::new();
    let (server, _client) = populated(&site).await;
    server.stop();
    // A byte of one entry's body, then (once restored) of an idempotency
    // record's answer.
    let original: Vec<u8> = site
        .db()
        .query_row("SELECT body FROM log WHERE pos = 30", [], |row| row.get(0))
        .expect("row 30");
    let mut flipped = original.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x10;
    site.db()
        .execute("UPDATE log SET body = ?1 WHERE pos = 30", [&flipped])
        .expect("flip");
    let report = verify_fails(&site);
    assert!(
        report.contains("journal position 30") && report.contains("checksum"),
        "{report}"
    );
    let text = serve_refuses(&site, &[]);
    assert!(text.contains("checksum"), "{text}");
    site.db()
        .execute("UPDATE log SET body = ?1 WHERE pos = 30", [&original])
        .expect("restore the row");
    verify_passes(&site.data);

    site.db()
        .execute(
            // Made to look expired: it must be found, not purged unseen.
            "UPDATE idempotency_record SET expires = 1 WHERE key = ?1",
            [&purser_store::key_hash("one-0")[..]],
        )
        .expect("alter an idempotency record");
    let report = verify_fails(&site);
    assert!(report.contains("idempotency"), "{report}");
    // Keys are not read at start (a day of them would make it slow): the
    // server serves, and the damaged record is refused when its key comes
    // back, never taken for "no record" (the charge would run twice).
    let server = site.start("damaged-record");
    let client = admin(&server, TIMEOUT);
    let before = balances(&client).await;
    let retry = client
        .charge(
            ACCOUNTS[0],
            &Charge::new(Cost::credits("1.5")),
            Some("one-0"),
        )
        .await
        .expect("an answer");
    assert_eq!(retry.status, 500, "{:?}", retry.body);
    assert!(
        retry.body.to_string().contains("checksum"),
        "{:?}",
        retry.body
    );
    assert_eq!(balances(&client).await, before, "nothing charged again");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_or_index_ahead_of_the_journal_is_evidence_of_loss() {
    let site = Site::new();
    let (server, _client) = populated(&site).await;
    server.stop();
    site.db()
        .execute_batch("UPDATE snapshot SET position = position + 1000 WHERE partition = (SELECT MIN(partition) FROM snapshot)")
        .expect("move a snapshot");
    let report = verify_fails(&site);
    assert!(report.contains("the snapshot of partition"), "{report}");
    serve_refuses(&site, &[]);
    site.db()
        .execute_batch("UPDATE snapshot SET position = position - 1000 WHERE position > 1000")
        .expect("put it back");
    verify_passes(&site.data);
    // A snapshot's bytes changed: refused before they are decoded.
    let (partition, body): (i64, Vec<u8>) = site
        .db()
        .query_row(
            "SELECT partition, body FROM snapshot ORDER BY length(body) DESC LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .expect("a snapshot");
    let mut changed = body.clone();
    let last = changed.len() - 1;
    changed[last] ^= 0x01;
    site.db()
        .execute(
            "UPDATE snapshot SET body = ?2 WHERE partition = ?1",
            rusqlite::params![partition, changed],
        )
        .expect("change a snapshot");
    let text = serve_refuses(&site, &[]);
    assert!(
        text.contains(&format!("the snapshot of partition {partition}"))
            && text.contains("checksum"),
        "{text}"
    );
    verify_fails(&site);
    site.db()
        .execute(
            "UPDATE snapshot SET body = ?2 WHERE partition = ?1",
            rusqlite::params![partition, body],
        )
        .expect("put it back");
    verify_passes(&site.data);
    // A derived history row that no longer says what its entry says.
    let history = rusqlite::Connection::open(site.file("history.db")).expect("history.db");
    history
        .execute_batch(
            "UPDATE entry SET credits = credits + 1 WHERE credits IS NOT NULL AND seq = 3",
        )
        .expect("alter the index");
    let report = verify_fails(&site);
    assert!(report.contains("history index"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_serving_restores_a_store_that_verifies() {
    let site = Site::new();
    let (server, client) = populated(&site).await;
    let before = balances(&client).await;
    // Charges keep coming while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let client = client.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) {
                let charge = Charge::new(Cost::credits("0.25"));
                let key = format!("load-{sent}");
                let reply = client.charge(ACCOUNTS[sent % 3], &charge, Some(&key)).await;
                assert_eq!(reply.expect("charge").status, 201);
                sent += 1;
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // verify reads the live store read-only, while it takes charges.
    verify_passes(&site.data);
    let target = site.work.join("backup");
    let output = purser()
        .arg("backup")
        .arg(&target)
        .arg("--data-dir")
        .arg(&site.data)
        .current_dir(&site.work)
        .output()
        .expect("run purser backup");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "backup failed:\n{text}");
    assert!(text.contains("ok: "), "the copy was not verified:\n{text}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = load.await.expect("load");
    assert!(sent > 0);
    let after = balances(&client).await;

    // A restore into a directory a server is using is refused.
    let restore = || {
        purser()
            .arg("restore")
            .arg(&target)
            .arg("--data-dir")
            .arg(&site.data)
            .current_dir(&site.work)
            .output()
            .expect("run purser restore")
    };
    let refused = restore();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // The data directory is lost; the backup brings back a consistent state
    // from between the two readings.
    server.kill();
    std::fs::remove_file(site.file("purser.db-wal")).expect("delete the WAL");
    serve_refuses(&site, &[]);
    let restored = restore();
    assert!(
        restored.status.success(),
        "restore failed:\n{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    let server = ServerProcess::start(&site.data, "restored");
    let client = admin(&server, TIMEOUT);
    let now = balances(&client).await;
    for ((now, before), after) in now.iter().zip(&before).zip(&after) {
        let available = |v: &serde_json::Value| -> i128 {
            let text = v["available"].as_str().expect("available").to_owned();
            common::ledger::parse_micros(&text)
        };
        assert!(
            available(before) >= available(now) && available(now) >= available(after),
            "restored {now} is not between {before} and {after}"
        );
    }
    server.stop();
    verify_passes(&site.data);
}

/// The PostgreSQL store: `verify --database-url` reads it without a lease
/// (while it serves), and a row deleted inside the journal is found and
/// refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_damage_is_found_by_verify_and_refused_at_start() {
    let admin_url = std::env::var("PURSER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("purser_damage_{}", std::process::id());
    let url = format!(
        "{}/{name}",
        admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(b, _)| b)
    );
    let sql = {
        let admin_url = admin_url.clone();
        move |url: String, statement: String| {
            std::thread::spawn(move || {
                let mut client = postgres::Client::connect(&url, postgres::NoTls)
                    .unwrap_or_else(|e| panic!("PostgreSQL is required at {url}: {e}"));
                client.batch_execute(&statement).expect("sql");
            })
            .join()
            .expect("sql thread");
            let _ = &admin_url;
        }
    };
    sql(
        admin_url.clone(),
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    );
    sql(admin_url.clone(), format!("CREATE DATABASE {name}"));
    let work = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start_on_database(&url, work.path(), "pg");
    let client = admin(&server, TIMEOUT);
    // Healthy first, then the writer once it holds the lease.
    let deadline = Instant::now() + Duration::from_secs(15);
    while client.get("/readyz").await.map(|reply| reply.status).ok() != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the server never became the writer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for account in ACCOUNTS {
        open_account(&client, account).await;
    }
    charge_all(&client, "pg", 30).await;
    let verify_pg = || {
        purser()
            .args(["verify", "--database-url", &url])
            .current_dir(work.path())
            .output()
            .expect("run verify")
    };
    // While the writer serves: read-only, no lease taken.
    let output = verify_pg();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    charge_all(&client, "pg-after-verify", 3).await;
    server.stop();
    sql(url.clone(), "DELETE FROM entry WHERE pos = 7".into());
    let output = verify_pg();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("positions 7 to 7 are missing"), "{text}");
    let refused = purser()
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &url])
        .current_dir(work.path())
        .env("PURSER_ADMIN_KEY", common::ADMIN_KEY)
        .output()
        .expect("run serve");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("positions 7 to 7 are missing"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    sql(
        admin_url,
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    );
}

/// The stored partition count is part of every account's address: a count
/// changed by hand would hide accounts (and let them be opened twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_partition_count_is_refused() {
    let site = Site::new();
    let (server, _client) = populated(&site).await;
    server.stop();
    site.db()
        .execute_batch("UPDATE setting SET value = '128' WHERE name = 'partitions'")
        .expect("change the count");
    let report = verify_fails(&site);
    assert!(report.contains("the stored partition count"), "{report}");
    let text = serve_refuses(&site, &[]);
    assert!(text.contains("the count was changed"), "{text}");
}

/// Another store's `purser.db` (longer than this one's) put in place, with
/// the derived index removed: the end marker's chain hash does not match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_from_another_store_is_refused() {
    let ours = Site::new();
    let (server, _client) = populated(&ours).await;
    server.stop();
    let theirs = Site::new();
    let (server, client) = populated(&theirs).await;
    charge_all(&client, "more", 30).await;
    server.stop();
    for file in [
        "history.db",
        "history.db-wal",
        "history.db-shm",
        "purser.db-wal",
        "purser.db-shm",
    ] {
        let _ = std::fs::remove_file(ours.file(file));
    }
    for file in ["purser.db", "purser.db-wal"] {
        if theirs.file(file).exists() {
            std::fs::copy(theirs.file(file), ours.file(file)).expect("copy");
        }
    }
    let report = verify_fails(&ours);
    assert!(
        report.contains("not the one the marker was written with"),
        "{report}"
    );
    serve_refuses(&ours, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_event_is_found_and_never_served() {
    let site = Site::new();
    let (server, client) = populated(&site).await;
    let events = client.get("/v1/events?limit=100").await.expect("events");
    assert_eq!(events.status, 200);
    let first = events.body["data"][0]["id"]
        .as_str()
        .expect("an event")
        .to_owned();
    server.stop();
    let original: Vec<u8> = site
        .db()
        .query_row(
            "SELECT body FROM event ORDER BY pos DESC LIMIT 1",
            [],
            |row| row.get(0),
        )
        .expect("the newest event");
    let changed = String::from_utf8(original)
        .expect("JSON")
        .replacen("account", "acc0unt", 1);
    site.db()
        .execute(
            "UPDATE event SET body = ?1 WHERE pos = (SELECT MAX(pos) FROM event)",
            [changed.as_bytes()],
        )
        .expect("change the event");
    let report = verify_fails(&site);
    assert!(report.contains("outbox"), "{report}");
    // Events are not read at start: the server serves, and the changed
    // event is refused when it is read, never served.
    let server = site.start("damaged-event");
    let client = admin(&server, TIMEOUT);
    for path in ["/v1/events".to_owned(), format!("/v1/events/{first}")] {
        let read = client.get(&path).await.expect("an answer");
        assert_eq!(read.status, 500, "{path}: {:?}", read.body);
        assert!(read.body.to_string().contains("damaged"), "{:?}", read.body);
    }
    server.stop();
}
