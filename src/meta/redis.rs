//! Metadata in Redis, shared by every replica.
//!
//! Transactions are optimistic and need no server-side state between calls: a read records
//! the SHA-1 of the value it saw (or that the key was absent), writes are buffered, and
//! `commit` sends one Lua script that re-checks every read key and applies the writes only
//! if none changed. A script runs atomically, so two replicas racing to append a version
//! cannot both win. WATCH is not used because it belongs to a connection, and the one
//! multiplexed connection is shared by every request of the process.
//!
//! The connection is a `ConnectionManager` on a `redis://`/`rediss://` URL, or on a
//! `redis+sentinel://`/`rediss+sentinel://` URL one that follows the master the sentinels
//! name ([`super::sentinel`]). Either way a lost server turns into `Unavailable` (503) at
//! once, and a command that may have reached a master that died is never sent twice.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Cmd, Pipeline, RedisFuture, Script, Value};

use super::sentinel::{is_sentinel_url, SentinelConn, SentinelUrl};
use super::{MetaError, MetaResult, MetaStore, MetaTx};
use crate::config::{redact_url, RedisConfig};

/// How long one connection attempt may take; an outage must answer 503 within seconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one command may wait for its reply.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Keys per MGET, so a listing of many templates does not build one huge reply.
const MGET_CHUNK: usize = 512;

/// Checks every read key, then applies the writes; answers 1, or 0 on a conflict.
///
/// KEYS: the `n` read keys, then one key per operation. ARGV: `n`, the `n` expected SHA-1s
/// (empty for "absent"; `#count` for a set whose members were counted), then the
/// operations: `S value` (SET), `D` (DEL), `A member` (SADD), `R member` (SREM).
const COMMIT_LUA: &str = r"
local n = tonumber(ARGV[1])
for i = 1, n do
  local want = ARGV[1 + i]
  if string.sub(want, 1, 1) == '#' then
    if redis.call('SCARD', KEYS[i]) ~= tonumber(string.sub(want, 2)) then return 0 end
  else
    local v = redis.call('GET', KEYS[i])
    if want == '' then
      if v then return 0 end
    elseif (not v) or redis.sha1hex(v) ~= want then
      return 0
    end
  end
end
local a = n + 2
local k = n + 1
while a <= #ARGV do
  local op = ARGV[a]
  if op == 'S' then
    redis.call('SET', KEYS[k], ARGV[a + 1]); a = a + 2
  elseif op == 'D' then
    redis.call('DEL', KEYS[k]); a = a + 1
  elseif op == 'A' then
    redis.call('SADD', KEYS[k], ARGV[a + 1]); a = a + 2
  elseif op == 'R' then
    redis.call('SREM', KEYS[k], ARGV[a + 1]); a = a + 2
  else
    return redis.error_reply('vmreg commit: unknown operation ' .. tostring(op))
  end
  k = k + 1
end
return 1
";

/// One Redis server, or the master Sentinel names.
#[derive(Clone)]
enum RedisConn {
    Direct(ConnectionManager),
    Sentinel(SentinelConn),
}

impl RedisConn {
    fn open(url: &str) -> MetaResult<Self> {
        let bad_url =
            |e: String| MetaError::Unavailable(format!("redis URL {}: {e}", redact_url(url)));
        // One quick retry per reconnection: requests made while Redis is down wait for the
        // reconnection future, so long backoffs would turn a 503 into a hung request. The
        // manager starts a new reconnection on the next I/O error, so it recovers by itself.
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_millis(500));
        if is_sentinel_url(url) {
            let parsed = SentinelUrl::parse(url).map_err(bad_url)?;
            let conn =
                SentinelConn::new(&parsed, manager_config).map_err(|e| bad_url(e.to_string()))?;
            return Ok(RedisConn::Sentinel(conn));
        }
        let client = redis::Client::open(url).map_err(|e| bad_url(e.to_string()))?;
        let conn =
            ConnectionManager::new_lazy_with_config(client, manager_config).map_err(unavailable)?;
        Ok(RedisConn::Direct(conn))
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Direct(c) => c.req_packed_command(cmd),
            RedisConn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipe: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Direct(c) => c.req_packed_commands(pipe, offset, count),
            RedisConn::Sentinel(c) => c.req_packed_commands(pipe, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Direct(c) => c.get_db(),
            RedisConn::Sentinel(c) => c.get_db(),
        }
    }
}

/// Metadata kept in Redis under a key prefix.
pub struct RedisMeta {
    conn: RedisConn,
    prefix: String,
    commit: Script,
    url: String,
}

fn unavailable(e: redis::RedisError) -> MetaError {
    MetaError::Unavailable(format!("redis: {e}"))
}

/// Ends the message of a [`RedisMeta::connect`] failure that retrying cannot cure.
const REFUSED: &str = "check the Redis URL and credentials";

/// Redis refused who we said we are (WRONGPASS, NOAUTH, an AUTH it has no password for).
fn credentials_refused(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
}

/// True for a [`RedisMeta::connect`] failure that is the configuration's (a malformed URL,
/// credentials the server rejects), not an unreachable server: starting again will not help.
pub fn is_configuration_error(e: &MetaError) -> bool {
    matches!(e, MetaError::Unavailable(m) if m.ends_with(&format!("({REFUSED})")))
}

impl RedisMeta {
    /// Connects to the server in `config`; fails when it cannot be reached now, so a wrong
    /// URL is reported at start-up rather than as 503s later.
    pub async fn connect(config: &RedisConfig) -> MetaResult<Self> {
        // A URL that does not parse is the configuration's: starting again will not help.
        let conn = RedisConn::open(&config.url).map_err(|e| match e {
            MetaError::Unavailable(m) if m.starts_with("redis URL ") => {
                MetaError::Unavailable(format!("{m} ({REFUSED})"))
            }
            e => e,
        })?;
        let meta = Self {
            conn,
            prefix: config.prefix.clone(),
            commit: Script::new(COMMIT_LUA),
            url: redact_url(&config.url),
        };
        let mut conn = meta.conn.clone();
        let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
        match pong {
            Ok(_) => Ok(meta),
            Err(e) if credentials_refused(&e) => Err(MetaError::Unavailable(format!(
                "redis {}: {e} ({REFUSED})",
                meta.url
            ))),
            Err(e) => Err(unavailable(e)),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[async_trait]
impl MetaStore for RedisMeta {
    async fn begin(&self) -> MetaResult<Box<dyn MetaTx>> {
        Ok(Box::new(RedisTx {
            conn: self.conn.clone(),
            prefix: self.prefix.clone(),
            commit: self.commit.clone(),
            reads: Vec::new(),
            seen: HashMap::new(),
            counted: HashMap::new(),
            ops: Vec::new(),
        }))
    }

    async fn get_many(&self, keys: &[String]) -> MetaResult<Vec<Option<Vec<u8>>>> {
        let mut out = Vec::with_capacity(keys.len());
        let mut conn = self.conn.clone();
        for chunk in keys.chunks(MGET_CHUNK) {
            let full: Vec<String> = chunk.iter().map(|k| self.key(k)).collect();
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(&full)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            out.extend(values);
        }
        Ok(out)
    }

    async fn members(&self, set: &str) -> MetaResult<Vec<String>> {
        let mut conn = self.conn.clone();
        conn.smembers(self.key(set)).await.map_err(unavailable)
    }

    async fn members_many(&self, sets: &[String]) -> MetaResult<Vec<Vec<String>>> {
        let mut out = Vec::with_capacity(sets.len());
        let mut conn = self.conn.clone();
        for chunk in sets.chunks(MGET_CHUNK) {
            let mut pipe = redis::pipe();
            for set in chunk {
                pipe.smembers(self.key(set));
            }
            let members: Vec<Vec<String>> =
                pipe.query_async(&mut conn).await.map_err(unavailable)?;
            out.extend(members);
        }
        Ok(out)
    }

    async fn count(&self, set: &str) -> MetaResult<u64> {
        let mut conn = self.conn.clone();
        conn.scard(self.key(set)).await.map_err(unavailable)
    }

    async fn keys_with_prefix(&self, prefix: &str) -> MetaResult<Vec<String>> {
        let pattern = format!("{}*", glob_escape(&self.key(prefix)));
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut found = std::collections::HashSet::new();
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            // SCAN may answer a key twice; the set keeps it once.
            found.extend(
                keys.into_iter()
                    .filter_map(|k| k.strip_prefix(&self.prefix).map(str::to_string)),
            );
            if next == 0 {
                return Ok(found.into_iter().collect());
            }
            cursor = next;
        }
    }

    async fn ping(&self) -> MetaResult<()> {
        let mut conn = self.conn.clone();
        let reply: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if reply == "PONG" {
            Ok(())
        } else {
            Err(MetaError::Unavailable(format!(
                "redis answered PING with {reply:?}"
            )))
        }
    }

    fn describe(&self) -> String {
        format!("redis {} (prefix {:?})", self.url, self.prefix)
    }
}

/// Keys SCAN looks at per round trip.
const SCAN_COUNT: usize = 1000;

/// `s` as a glob pattern that matches only itself.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

enum Op {
    Set(Vec<u8>),
    Del,
    SetAdd(String),
    SetRemove(String),
}

/// The SHA-1 the commit script compares with, or empty for "absent".
fn fingerprint(value: Option<&[u8]>) -> String {
    match value {
        None => String::new(),
        Some(v) => sha1_smol::Sha1::from(v).digest().to_string(),
    }
}

struct RedisTx {
    conn: RedisConn,
    prefix: String,
    commit: Script,
    /// Read keys (prefixed) and the fingerprint seen, in read order; a counted set's
    /// fingerprint is `#` and the count.
    reads: Vec<(String, String)>,
    /// What the transaction sees for a key: its first read, then its own writes.
    seen: HashMap<String, Option<Vec<u8>>>,
    /// The member count first read of each counted set (prefixed).
    counted: HashMap<String, u64>,
    /// Buffered writes on prefixed keys, in order.
    ops: Vec<(String, Op)>,
}

#[async_trait]
impl MetaTx for RedisTx {
    async fn get(&mut self, key: &str) -> MetaResult<Option<Vec<u8>>> {
        let full = format!("{}{key}", self.prefix);
        if let Some(v) = self.seen.get(&full) {
            return Ok(v.clone());
        }
        let value: Option<Vec<u8>> = self.conn.get(&full).await.map_err(unavailable)?;
        self.reads
            .push((full.clone(), fingerprint(value.as_deref())));
        self.seen.insert(full, value.clone());
        Ok(value)
    }

    async fn get_many(&mut self, keys: &[String]) -> MetaResult<Vec<Option<Vec<u8>>>> {
        let full: Vec<String> = keys.iter().map(|k| format!("{}{k}", self.prefix)).collect();
        let unseen: Vec<&String> = full
            .iter()
            .filter(|k| !self.seen.contains_key(*k))
            .collect();
        for chunk in unseen.chunks(MGET_CHUNK) {
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(chunk)
                .query_async(&mut self.conn)
                .await
                .map_err(unavailable)?;
            for (key, value) in chunk.iter().zip(values) {
                if self.seen.contains_key(*key) {
                    continue; // asked twice in one call
                }
                self.reads
                    .push(((*key).clone(), fingerprint(value.as_deref())));
                self.seen.insert((*key).clone(), value);
            }
        }
        Ok(full
            .iter()
            .map(|k| self.seen.get(k).cloned().flatten())
            .collect())
    }

    async fn count(&mut self, set: &str) -> MetaResult<u64> {
        let full = format!("{}{set}", self.prefix);
        if let Some(n) = self.counted.get(&full) {
            return Ok(*n);
        }
        let n: u64 = self.conn.scard(&full).await.map_err(unavailable)?;
        self.reads.push((full.clone(), format!("#{n}")));
        self.counted.insert(full, n);
        Ok(n)
    }

    fn put(&mut self, key: &str, value: Vec<u8>) {
        let full = format!("{}{key}", self.prefix);
        self.seen.insert(full.clone(), Some(value.clone()));
        self.ops.push((full, Op::Set(value)));
    }

    fn delete(&mut self, key: &str) {
        let full = format!("{}{key}", self.prefix);
        self.seen.insert(full.clone(), None);
        self.ops.push((full, Op::Del));
    }

    fn set_add(&mut self, set: &str, member: &str) {
        self.ops.push((
            format!("{}{set}", self.prefix),
            Op::SetAdd(member.to_string()),
        ));
    }

    fn set_remove(&mut self, set: &str, member: &str) {
        self.ops.push((
            format!("{}{set}", self.prefix),
            Op::SetRemove(member.to_string()),
        ));
    }

    async fn commit(self: Box<Self>) -> MetaResult<bool> {
        let RedisTx {
            mut conn,
            commit,
            reads,
            ops,
            ..
        } = *self;
        if ops.is_empty() {
            // Nothing to apply: a read-only transaction saw a consistent enough view.
            return Ok(true);
        }
        let mut inv = commit.prepare_invoke();
        inv.arg(reads.len());
        for (key, print) in &reads {
            inv.key(key);
            inv.arg(print);
        }
        for (key, op) in &ops {
            inv.key(key);
            match op {
                Op::Set(v) => inv.arg("S").arg(v.as_slice()),
                Op::Del => inv.arg("D"),
                Op::SetAdd(m) => inv.arg("A").arg(m),
                Op::SetRemove(m) => inv.arg("R").arg(m),
            };
        }
        let applied: i64 = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        Ok(applied == 1)
    }
}

#[cfg(test)]
mod tests {
    //! These need a real Redis at `VMREG_TEST_REDIS_URL` (`scripts/test-services.sh`
    //! starts one), so they are `#[ignore]`d: a plain `cargo test` counts them as ignored,
    //! and `scripts/test.sh` runs them with `--include-ignored`, where a missing Redis fails.

    use super::*;

    /// Why these tests are ignored by default.
    const NEEDS_REDIS: &str = "needs Redis at VMREG_TEST_REDIS_URL (scripts/test.sh)";

    async fn store() -> RedisMeta {
        let url = std::env::var("VMREG_TEST_REDIS_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| panic!("this test {NEEDS_REDIS}"));
        let prefix = format!("vmreg-unit-{}:", uuid::Uuid::new_v4());
        match RedisMeta::connect(&RedisConfig { url, prefix }).await {
            Ok(m) => m,
            Err(e) => panic!("VMREG_TEST_REDIS_URL is set but Redis is not reachable: {e}"),
        }
    }

    #[tokio::test]
    #[ignore = "needs Redis at VMREG_TEST_REDIS_URL (scripts/test.sh)"]
    async fn commits_atomically_and_reads_own_writes() {
        let meta = store().await;
        crate::meta::contract::transactions_are_atomic(&meta).await;
    }

    #[tokio::test]
    #[ignore = "needs Redis at VMREG_TEST_REDIS_URL (scripts/test.sh)"]
    async fn a_transaction_reads_many_keys_in_order() {
        let meta = store().await;
        crate::meta::contract::a_transaction_reads_many_keys_in_order(&meta).await;
    }

    #[tokio::test]
    #[ignore = "needs Redis at VMREG_TEST_REDIS_URL (scripts/test.sh)"]
    async fn keys_are_found_by_prefix() {
        let meta = store().await;
        crate::meta::contract::keys_are_found_by_prefix(&meta).await;
    }

    #[tokio::test]
    #[ignore = "needs Redis at VMREG_TEST_REDIS_URL (scripts/test.sh)"]
    async fn a_cap_counted_in_a_transaction_holds_under_racing_writers() {
        let meta = store().await;
        crate::meta::contract::a_cap_counted_in_a_transaction_holds_under_racing_writers(&meta)
            .await;
    }

    #[tokio::test]
    #[ignore = "needs Redis at VMREG_TEST_REDIS_URL (scripts/test.sh)"]
    async fn a_changed_count_fails_the_commit() {
        let meta = store().await;
        let mut seed = meta.begin().await.unwrap();
        seed.set_add("held", "a");
        assert!(seed.commit().await.unwrap());

        // A member added after the count was read fails the commit; a removal too.
        for change in ["add", "remove"] {
            let mut a = meta.begin().await.unwrap();
            let n = a.count("held").await.unwrap();
            a.set_add("held", &format!("mine-{change}"));
            let mut b = meta.begin().await.unwrap();
            match change {
                "add" => b.set_add("held", "b"),
                _ => b.set_remove("held", "b"),
            }
            assert!(b.commit().await.unwrap());
            assert_ne!(meta.count("held").await.unwrap(), n);
            assert!(!a.commit().await.unwrap(), "a counted before b's {change}");
        }
        // Read again, the count commits; re-adding a member leaves it as it was.
        let mut c = meta.begin().await.unwrap();
        assert_eq!(c.count("held").await.unwrap(), 1);
        c.set_add("held", "c");
        let mut d = meta.begin().await.unwrap();
        d.set_add("held", "a");
        assert!(d.commit().await.unwrap());
        assert!(c.commit().await.unwrap(), "the count did not change");
        assert_eq!(meta.count("held").await.unwrap(), 2);
    }

    #[tokio::test]
    #[ignore = "needs Redis at VMREG_TEST_REDIS_URL (scripts/test.sh)"]
    async fn a_changed_read_key_fails_the_commit() {
        let meta = store().await;
        let mut seed = meta.begin().await.unwrap();
        seed.put("n", b"0".to_vec());
        assert!(seed.commit().await.unwrap());

        // Two transactions read the same counter; only the first to commit may win.
        let mut a = meta.begin().await.unwrap();
        let mut b = meta.begin().await.unwrap();
        assert_eq!(a.get("n").await.unwrap(), Some(b"0".to_vec()));
        assert_eq!(b.get("n").await.unwrap(), Some(b"0".to_vec()));
        a.put("n", b"1".to_vec());
        a.set_add("winners", "a");
        b.put("n", b"1".to_vec());
        b.set_add("winners", "b");
        assert!(a.commit().await.unwrap());
        assert!(!b.commit().await.unwrap(), "b read n before a changed it");
        assert_eq!(
            meta.members("winners").await.unwrap(),
            vec!["a"],
            "a failed commit applies nothing"
        );

        // Absence is checked too: two creators of the same key cannot both succeed.
        let mut c = meta.begin().await.unwrap();
        let mut d = meta.begin().await.unwrap();
        assert_eq!(c.get("fresh").await.unwrap(), None);
        assert_eq!(d.get("fresh").await.unwrap(), None);
        c.put("fresh", b"c".to_vec());
        d.put("fresh", b"d".to_vec());
        assert!(c.commit().await.unwrap());
        assert!(!d.commit().await.unwrap());
        assert_eq!(
            meta.get_many(&["fresh".into()]).await.unwrap(),
            vec![Some(b"c".to_vec())]
        );

        // Keys read together are watched each, present or absent.
        for changed in ["n", "fresh", "absent"] {
            let mut e = meta.begin().await.unwrap();
            let read: Vec<String> = ["n", "fresh", "absent"].map(String::from).to_vec();
            e.get_many(&read).await.unwrap();
            e.put("out", b"e".to_vec());
            let mut f = meta.begin().await.unwrap();
            f.put(changed, b"f".to_vec());
            assert!(f.commit().await.unwrap());
            assert!(
                !e.commit().await.unwrap(),
                "e read {changed} before f changed it"
            );
            let mut undo = meta.begin().await.unwrap();
            undo.delete("absent");
            assert!(undo.commit().await.unwrap());
        }
        assert_eq!(meta.get_many(&["out".into()]).await.unwrap(), vec![None]);
    }

    #[tokio::test]
    #[ignore = "needs Redis at VMREG_TEST_REDIS_URL (scripts/test.sh)"]
    async fn concurrent_increments_lose_nothing() {
        let meta = store().await;
        let meta = std::sync::Arc::new(meta);
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let meta = meta.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let mut tx = meta.begin().await.unwrap();
                    let n: u64 = tx
                        .get("counter")
                        .await
                        .unwrap()
                        .map(|v| String::from_utf8(v).unwrap().parse().unwrap())
                        .unwrap_or(0);
                    tx.put("counter", (n + 1).to_string().into_bytes());
                    if tx.commit().await.unwrap() {
                        break;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            meta.get_many(&["counter".into()]).await.unwrap(),
            vec![Some(b"20".to_vec())]
        );
    }

    #[tokio::test]
    #[ignore = "needs Redis at VMREG_TEST_REDIS_URL (scripts/test.sh)"]
    async fn get_many_spans_chunks_and_keeps_order() {
        let meta = store().await;
        let keys: Vec<String> = (0..(MGET_CHUNK * 2 + 7)).map(|i| format!("k{i}")).collect();
        let mut tx = meta.begin().await.unwrap();
        for (i, k) in keys.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
            tx.put(k, i.to_string().into_bytes());
        }
        assert!(tx.commit().await.unwrap());
        let values = meta.get_many(&keys).await.unwrap();
        assert_eq!(values.len(), keys.len());
        for (i, v) in values.iter().enumerate() {
            let want = (i % 3 == 0).then(|| i.to_string().into_bytes());
            assert_eq!(v, &want, "key {i}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_server_is_unavailable_quickly() {
        // A port nothing listens on: connect must fail fast, not hang.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let started = std::time::Instant::now();
        let result = RedisMeta::connect(&RedisConfig {
            url: format!("redis://127.0.0.1:{port}"),
            prefix: "x:".into(),
        })
        .await;
        assert!(matches!(result, Err(MetaError::Unavailable(_))));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
    }
}
