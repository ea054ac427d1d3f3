//! A fresh PostgreSQL database per test, on the server named by
//! `POSTAMT_TEST_POSTGRES` (a libpq connection string or URL of a role that
//! may create databases; `.ci/postgres.sh start` sets one up). Without it
//! the PostgreSQL tests skip with a note, except under `CI=true`, where
//! they fail.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postamt_store::{PgOptions, PgStore};
use postgres::{Client, NoTls};

pub(crate) const ENV: &str = "POSTAMT_TEST_POSTGRES";

/// The server's connection string, or `None` (with a note) when the tests
/// are to skip.
pub(crate) fn server() -> Option<String> {
    match std::env::var(ENV) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "{ENV} is not set: under CI=true the PostgreSQL tests must run (.ci/postgres.sh)"
                );
            }
            eprintln!("note: {ENV} is not set; skipping a PostgreSQL test");
            None
        }
    }
}

/// One database of its own, dropped (with its connections) at the end.
pub(crate) struct TestDb {
    server: String,
    name: String,
}

impl TestDb {
    /// A new empty database, or `None` when the tests skip.
    pub(crate) fn new() -> Option<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let server = server()?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "postamt_test_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = Client::connect(&server, NoTls).expect("connect to POSTAMT_TEST_POSTGRES");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create a test database");
        Some(Self { server, name })
    }

    /// The connection string of this database.
    pub(crate) fn url(&self) -> String {
        with_dbname(&self.server, &self.name)
    }

    /// Drops the database now, with its connections (a database that
    /// went away under a running store).
    pub(crate) fn drop_now(&self) {
        let mut admin =
            Client::connect(&self.server, NoTls).expect("connect to POSTAMT_TEST_POSTGRES");
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .expect("drop the test database");
    }

    /// A plain client on this database, to look at the tables.
    pub(crate) fn client(&self) -> Client {
        Client::connect(&self.url(), NoTls).unwrap()
    }

    pub(crate) fn store(&self) -> PgStore {
        PgStore::connect_with(&self.url(), options()).unwrap()
    }

    pub(crate) fn store_with(&self, options: PgOptions) -> PgStore {
        PgStore::connect_with(&self.url(), options).unwrap()
    }
}

/// Test options: a small pool, so many parallel tests fit the server.
pub(crate) fn options() -> PgOptions {
    let mut options = PgOptions::default();
    options.pool_size = 12;
    options
}

/// Options with a short lease, for tests of expiry.
pub(crate) fn short_lease(ttl: Duration) -> PgOptions {
    let mut options = options();
    options.lease_ttl = ttl;
    options
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = Client::connect(&self.server, NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// `server` with its database replaced by `name`, for both forms libpq
/// knows: `key=value ...` (a later key wins) and `postgresql://.../db?...`.
fn with_dbname(server: &str, name: &str) -> String {
    let Some(scheme_end) = server.find("://") else {
        return format!("{server} dbname={name}");
    };
    let (base, query) = match server.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (server, String::new()),
    };
    let authority_start = scheme_end + 3;
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    format!("{}/{name}{query}", &base[..authority_end])
}
