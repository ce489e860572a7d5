use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, Pool, Runtime};
use seawall_core::ConfigError;
use tokio_postgres::NoTls;

use super::{millis, Claim, Completion, Store, StoreFuture};
use crate::error::StoreError;
use crate::key::{FencingToken, Fingerprint, StoreKey};
use crate::record::StoredResponse;

/// Records in a PostgreSQL table, shared by every replica that uses the
/// same database and table (feature `postgres`).
///
/// The table (default `seawall_idempotency`) is created by
/// [`create_table`](Self::create_table) (or [`connect`](Self::connect)):
///
/// ```sql
/// CREATE TABLE IF NOT EXISTS seawall_idempotency (
///     key         text PRIMARY KEY,    -- hex SHA-256 of layer, tenant, key
///     fingerprint bytea NOT NULL,
///     token       text,                -- the claim's fencing token; NULL once completed
///     response    bytea,               -- the encoded response; NULL while in flight
///     expires_at  timestamptz NOT NULL -- end of the lease, then of the retention
/// );
/// ```
///
/// Every expiry is computed and compared on the database clock (`now()`),
/// so replicas whose clocks disagree still agree on who holds a key. A claim
/// is one short transaction: delete the key's row if it has expired, then
/// `INSERT ... ON CONFLICT DO NOTHING`; the unique key makes exactly one
/// concurrent insert win. Completion and release are single statements
/// guarded by the token. Expired rows are ignored by claims; delete them in
/// bulk with [`sweep`](Self::sweep) (e.g. every few minutes).
///
/// # Memory bound
///
/// Records live in the database, on disk: each row is at most the layer's
/// `max_stored_body` plus its headers and about 150 bytes, kept for the
/// lease, then the retention, and until the next sweep. This process holds
/// only the pool's connections and the records of requests in flight. A
/// row is never deleted while it is live, so a database that runs out of
/// space fails new claims (503) rather than forgetting a record.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    table: Arc<str>,
    sql: Arc<Sql>,
}

struct Sql {
    delete_expired: String,
    insert: String,
    select: String,
    complete: String,
    release: String,
    renew: String,
    sweep: String,
}

impl PostgresStore {
    /// The default table name.
    pub const DEFAULT_TABLE: &'static str = "seawall_idempotency";

    /// A store on `pool` using `table` (a plain lowercase SQL identifier).
    /// Does no I/O; call [`create_table`](Self::create_table) once.
    pub fn new(pool: Pool, table: &str) -> Result<Self, ConfigError> {
        let valid = !table.is_empty()
            && table.len() <= 63
            && table.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && table
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(ConfigError::new(
                "idempotency postgres store",
                "table",
                format!("must match [a-z_][a-z0-9_]{{0,62}}, got {table:?}"),
            ));
        }
        let t = table;
        Ok(Self {
            pool,
            table: Arc::from(table),
            sql: Arc::new(Sql {
                delete_expired: format!("DELETE FROM {t} WHERE key = $1 AND expires_at <= now()"),
                insert: format!(
                    "INSERT INTO {t} (key, fingerprint, token, expires_at) \
                     VALUES ($1, $2, $3, now() + $4::bigint * interval '1 millisecond') \
                     ON CONFLICT (key) DO NOTHING"
                ),
                select: format!(
                    "SELECT fingerprint, response, \
                     (extract(epoch FROM (expires_at - now())) * 1000)::bigint \
                     FROM {t} WHERE key = $1 AND expires_at > now()"
                ),
                complete: format!(
                    "UPDATE {t} SET response = $3, token = NULL, \
                     expires_at = now() + $4::bigint * interval '1 millisecond' \
                     WHERE key = $1 AND token = $2 AND response IS NULL AND expires_at > now()"
                ),
                release: format!(
                    "DELETE FROM {t} WHERE key = $1 AND token = $2 AND response IS NULL"
                ),
                renew: format!(
                    "UPDATE {t} SET expires_at = now() + $3::bigint * interval '1 millisecond' \
                     WHERE key = $1 AND token = $2 AND response IS NULL AND expires_at > now()"
                ),
                sweep: format!("DELETE FROM {t} WHERE expires_at <= now()"),
            }),
        })
    }

    /// A pool for `url` (`postgres://user@host:port/db`) without TLS, whose
    /// connection attempts and waits time out after two seconds so a
    /// database that is down fails requests fast.
    pub fn pool_for(url: &str, max_size: usize) -> Result<Pool, ConfigError> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e: tokio_postgres::Error| {
                ConfigError::new("idempotency postgres store", "url", e.to_string())
            })?;
        config.connect_timeout(Duration::from_secs(2));
        let manager = Manager::new(config, NoTls);
        Pool::builder(manager)
            .max_size(max_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(2)))
            .create_timeout(Some(Duration::from_secs(2)))
            .recycle_timeout(Some(Duration::from_secs(2)))
            .build()
            .map_err(|e| ConfigError::new("idempotency postgres store", "pool", e.to_string()))
    }

    /// Connects to `url` with a pool of 16 connections, and creates the
    /// default table if it does not exist.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = Self::pool_for(url, 16).map_err(StoreError::unavailable)?;
        let store = Self::new(pool, Self::DEFAULT_TABLE).map_err(StoreError::unavailable)?;
        store.create_table().await?;
        Ok(store)
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The connection pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Creates the table and its expiry index if they do not exist.
    ///
    /// Safe to run from every replica at once: an advisory lock serialises
    /// the creations (a bare `CREATE TABLE IF NOT EXISTS` can still fail
    /// with a unique violation when two sessions race).
    pub async fn create_table(&self) -> Result<(), StoreError> {
        let t = &self.table;
        let mut client = self.pool.get().await.map_err(StoreError::unavailable)?;
        let tx = client
            .transaction()
            .await
            .map_err(StoreError::unavailable)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            &[&format!("seawall-idempotency:{t}")],
        )
        .await
        .map_err(StoreError::unavailable)?;
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {t} (
                key text PRIMARY KEY,
                fingerprint bytea NOT NULL,
                token text,
                response bytea,
                expires_at timestamptz NOT NULL
            );
            CREATE INDEX IF NOT EXISTS {t}_expires_at ON {t} (expires_at);"
        ))
        .await
        .map_err(StoreError::unavailable)?;
        tx.commit().await.map_err(StoreError::unavailable)
    }

    /// Deletes every expired row (ended leases, ended retention); returns
    /// how many.
    pub async fn sweep(&self) -> Result<u64, StoreError> {
        let client = self.pool.get().await.map_err(StoreError::unavailable)?;
        client
            .execute(&self.sql.sweep, &[])
            .await
            .map_err(StoreError::unavailable)
    }

    async fn try_claim(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        token: &FencingToken,
        lease: Duration,
    ) -> Result<Option<Claim>, StoreError> {
        let mut client = self.pool.get().await.map_err(StoreError::unavailable)?;
        let tx = client
            .transaction()
            .await
            .map_err(StoreError::unavailable)?;
        let delete = tx
            .prepare_cached(&self.sql.delete_expired)
            .await
            .map_err(StoreError::unavailable)?;
        tx.execute(&delete, &[&key])
            .await
            .map_err(StoreError::unavailable)?;
        let insert = tx
            .prepare_cached(&self.sql.insert)
            .await
            .map_err(StoreError::unavailable)?;
        let fp: &[u8] = fingerprint.as_bytes();
        let inserted = tx
            .execute(&insert, &[&key, &fp, &token.as_str(), &millis(lease)])
            .await
            .map_err(StoreError::unavailable)?;
        let claim = if inserted == 1 {
            Some(Claim::Claimed(token.clone()))
        } else {
            let select = tx
                .prepare_cached(&self.sql.select)
                .await
                .map_err(StoreError::unavailable)?;
            let row = tx
                .query_opt(&select, &[&key])
                .await
                .map_err(StoreError::unavailable)?;
            match row {
                // The holder released or its row expired between our insert
                // and select: try again.
                None => None,
                Some(row) => {
                    let stored_fp: Vec<u8> = row.try_get(0).map_err(StoreError::unavailable)?;
                    let response: Option<Vec<u8>> =
                        row.try_get(1).map_err(StoreError::unavailable)?;
                    let left_ms: i64 = row.try_get(2).map_err(StoreError::unavailable)?;
                    Some(if stored_fp != fp {
                        Claim::Mismatch
                    } else if let Some(bytes) = response {
                        let (_, response) = StoredResponse::decode(&bytes)
                            .ok_or_else(|| StoreError::corrupt("unreadable record in postgres"))?;
                        Claim::Completed(response)
                    } else {
                        Claim::InFlight {
                            retry_after: Duration::from_millis(u64::try_from(left_ms).unwrap_or(0)),
                        }
                    })
                }
            }
        };
        tx.commit().await.map_err(StoreError::unavailable)?;
        Ok(claim)
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl Store for PostgresStore {
    fn claim<'a>(
        &'a self,
        key: &'a StoreKey,
        fingerprint: &'a Fingerprint,
        lease: Duration,
    ) -> StoreFuture<'a, Claim> {
        Box::pin(async move {
            let hex = key.to_hex();
            let token = FencingToken::random();
            for _ in 0..3 {
                if let Some(claim) = self.try_claim(&hex, fingerprint, &token, lease).await? {
                    return Ok(claim);
                }
            }
            // The key keeps changing hands; tell the client to come back.
            Ok(Claim::InFlight {
                retry_after: Duration::from_secs(1),
            })
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a FencingToken,
        fingerprint: &'a Fingerprint,
        response: &'a StoredResponse,
        retention: Duration,
    ) -> StoreFuture<'a, Completion> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(StoreError::unavailable)?;
            let stmt = client
                .prepare_cached(&self.sql.complete)
                .await
                .map_err(StoreError::unavailable)?;
            let encoded = response.encode(fingerprint);
            let updated = client
                .execute(
                    &stmt,
                    &[&key.to_hex(), &token.as_str(), &encoded, &millis(retention)],
                )
                .await
                .map_err(StoreError::unavailable)?;
            Ok(if updated == 1 {
                Completion::Stored
            } else {
                Completion::Fenced
            })
        })
    }

    fn release<'a>(&'a self, key: &'a StoreKey, token: &'a FencingToken) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(StoreError::unavailable)?;
            let stmt = client
                .prepare_cached(&self.sql.release)
                .await
                .map_err(StoreError::unavailable)?;
            let deleted = client
                .execute(&stmt, &[&key.to_hex(), &token.as_str()])
                .await
                .map_err(StoreError::unavailable)?;
            Ok(deleted == 1)
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a FencingToken,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(StoreError::unavailable)?;
            let stmt = client
                .prepare_cached(&self.sql.renew)
                .await
                .map_err(StoreError::unavailable)?;
            let updated = client
                .execute(&stmt, &[&key.to_hex(), &token.as_str(), &millis(lease)])
                .await
                .map_err(StoreError::unavailable)?;
            Ok(updated == 1)
        })
    }
}
