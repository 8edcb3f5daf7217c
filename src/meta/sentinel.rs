//! Redis behind Sentinel: the URL that names it and a connection that follows its failovers.
//!
//! The URL follows the convention of redis-py's Sentinel URL packages (Redis-Sentinel-Url,
//! Prefect/docket) and redis-vl:
//!
//! ```text
//! redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/master-name[/db][?options]
//! rediss+sentinel://…   TLS to the sentinels and to the data nodes
//! ```
//!
//! The user and password are the data nodes' AUTH; `sentinel_username=` and
//! `sentinel_password=` authenticate to the sentinels, which usually have their own
//! (`requirepass` in sentinel.conf). A sentinel without a port is on 26379.
//!
//! `ConnectionManager` reconnects only to the address it was built with, so it cannot follow
//! a failover by itself. [`SentinelConn`] keeps one manager on the master the sentinels name
//! and drops it when the master stops being one: on a connection error, a timeout, or a
//! READONLY/MASTERDOWN reply (a demoted master refusing a write). The next command asks the
//! sentinels again, so commands reach the new master as soon as Sentinel has promoted it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use percent_encoding::percent_decode_str;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Cmd, ConnectionAddr, ErrorKind, Pipeline, RedisError, RedisResult, TlsMode, Value};

/// Port of a sentinel the URL gives without one.
const SENTINEL_PORT: u16 = 26379;
/// How long one round of asking the sentinels for the master may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// After a failed lookup, commands fail at once for this long instead of asking again, so
/// an outage of every sentinel answers 503 quickly rather than queueing lookups.
const LOOKUP_BACKOFF: Duration = Duration::from_millis(200);

/// True when `url` names Redis through Sentinel.
pub fn is_sentinel_url(url: &str) -> bool {
    let scheme = url.split("://").next().unwrap_or("").to_ascii_lowercase();
    scheme == "redis+sentinel" || scheme == "rediss+sentinel"
}

/// A parsed `redis+sentinel://` or `rediss+sentinel://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    /// TLS to the sentinels and to the data nodes (`rediss+sentinel`).
    pub tls: bool,
    /// The sentinels, host and port, in the order given.
    pub sentinels: Vec<(String, u16)>,
    /// The master's name in the sentinels' configuration (`sentinel monitor <name> …`).
    pub master: String,
    /// Database number on the data nodes.
    pub db: i64,
    /// AUTH user on the data nodes.
    pub username: Option<String>,
    /// AUTH password on the data nodes.
    pub password: Option<String>,
    /// AUTH user on the sentinels.
    pub sentinel_username: Option<String>,
    /// AUTH password on the sentinels.
    pub sentinel_password: Option<String>,
}

impl std::fmt::Debug for SentinelUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |p: &Option<String>| p.as_ref().map(|_| "***");
        f.debug_struct("SentinelUrl")
            .field("tls", &self.tls)
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &hidden(&self.password))
            .field("sentinel_username", &self.sentinel_username)
            .field("sentinel_password", &hidden(&self.sentinel_password))
            .finish()
    }
}

fn decoded(s: &str, what: &str) -> Result<String, String> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| format!("the {what} is not UTF-8 once percent-decoded"))
}

/// One `host[:port]` or `[v6]:port` of the sentinel list.
fn sentinel_addr(s: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("sentinel {s:?}: an IPv6 address needs its closing ]"))?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("sentinel {s:?}: expected :port after ]"))?,
                ),
            ),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err(format!("sentinel {s:?} has no host"));
    }
    let port = match port {
        None => SENTINEL_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("sentinel {s:?}: {p:?} is not a port"))?,
    };
    Ok((host.to_string(), port))
}

impl SentinelUrl {
    /// Parses a Sentinel URL; the error says what is wrong without repeating any password.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or("a Sentinel URL starts with redis+sentinel:// or rediss+sentinel://")?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "redis+sentinel" => false,
            "rediss+sentinel" => true,
            other => {
                return Err(format!(
                    "scheme {other:?} is not redis+sentinel or rediss+sentinel"
                ))
            }
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        if rest.contains('#') || query.is_some_and(|q| q.contains('#')) {
            return Err("a Sentinel URL has no #fragment".into());
        }
        // The last @ ends the user info: a password may hold an unencoded @.
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((u, r)) => (Some(u), r),
            None => (None, rest),
        };
        let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut out = SentinelUrl {
            tls,
            sentinels: Vec::new(),
            master: String::new(),
            db: 0,
            username: None,
            password: None,
            sentinel_username: None,
            sentinel_password: None,
        };
        if let Some(info) = userinfo {
            let (user, pass) = match info.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (info, None),
            };
            if !user.is_empty() {
                out.username = Some(decoded(user, "user name")?);
            }
            if let Some(p) = pass.filter(|p| !p.is_empty()) {
                out.password = Some(decoded(p, "password")?);
            }
        }
        if hosts.is_empty() {
            return Err(
                "no sentinel in the URL: redis+sentinel://host:port[,host:port…]/<master-name>"
                    .into(),
            );
        }
        for host in hosts.split(',') {
            if host.is_empty() {
                return Err("the sentinel list has an empty entry".into());
            }
            out.sentinels.push(sentinel_addr(host)?);
        }
        let mut segments = path.split('/');
        out.master = decoded(segments.next().unwrap_or(""), "master name")?;
        if out.master.is_empty() {
            return Err(
                "no master name: redis+sentinel://host:port[,host:port…]/<master-name>[/db]".into(),
            );
        }
        match (segments.next(), segments.next()) {
            (None, _) | (Some(""), None) => {}
            (Some(db), None) => {
                out.db = db
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| format!("database {db:?} is not a number"))?;
            }
            _ => return Err("the path is /<master-name>[/db], nothing more".into()),
        }
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decoded(value, key)?;
            let value = Some(value).filter(|v| !v.is_empty());
            match key {
                "sentinel_username" => out.sentinel_username = value,
                "sentinel_password" => out.sentinel_password = value,
                other => {
                    return Err(format!(
                        "unknown option {other:?} (known: sentinel_username, sentinel_password)"
                    ))
                }
            }
        }
        Ok(out)
    }

    /// The sentinels as one line, for logs and errors.
    pub fn sentinel_list(&self) -> String {
        self.sentinels
            .iter()
            .map(|(h, p)| {
                if h.contains(':') {
                    format!("[{h}]:{p}")
                } else {
                    format!("{h}:{p}")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    fn client(&self) -> RedisResult<SentinelClient> {
        let addrs = self.sentinels.iter().map(|(host, port)| {
            if self.tls {
                ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                ConnectionAddr::Tcp(host.clone(), *port)
            }
        });
        let mut b = SentinelClientBuilder::new(addrs, &self.master, SentinelServerType::Master)?
            .set_client_to_redis_db(self.db);
        if self.tls {
            b = b
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(TlsMode::Secure);
        }
        if let Some(u) = &self.username {
            b = b.set_client_to_redis_username(u);
        }
        if let Some(p) = &self.password {
            b = b.set_client_to_redis_password(p);
        }
        if let Some(u) = &self.sentinel_username {
            b = b.set_client_to_sentinel_username(u);
        }
        if let Some(p) = &self.sentinel_password {
            b = b.set_client_to_sentinel_password(p);
        }
        b.build()
    }
}

/// The master in use: a manager on its address, and which lookup found it.
#[derive(Clone)]
struct Master {
    generation: u64,
    addr: String,
    conn: ConnectionManager,
}

struct Shared {
    master_name: String,
    sentinels: String,
    db: i64,
    manager_config: ConnectionManagerConfig,
    /// Lookups are one at a time: a failover makes every in-flight command fail at once,
    /// and one answer from the sentinels serves them all.
    lookup: tokio::sync::Mutex<SentinelClient>,
    /// Never held across an await.
    current: RwLock<Option<Master>>,
    /// When the last lookup failed, and how.
    failed: RwLock<Option<(Instant, String)>>,
    generations: AtomicU64,
}

/// A connection to whichever node the sentinels name master; cheap to clone.
#[derive(Clone)]
pub struct SentinelConn(Arc<Shared>);

/// Whether an error means the node may no longer be the master.
fn master_lost(e: &RedisError) -> bool {
    use redis::ServerErrorKind as S;
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Server(S::ReadOnly) | ErrorKind::Server(S::MasterDown)
        )
        // A write refused inside the commit script comes back as the script's error.
        || e.to_string().contains("READONLY")
}

/// Whether the node surely did not run the command, so sending it again cannot apply it
/// twice: it refused the connection, or refused the write as a replica.
fn not_applied(e: &RedisError) -> bool {
    use redis::ServerErrorKind as S;
    e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Server(S::ReadOnly) | ErrorKind::Server(S::MasterDown)
        )
        || e.to_string().contains("READONLY")
}

fn lookup_error(detail: String) -> RedisError {
    RedisError::from((ErrorKind::Io, "no Redis master from Sentinel", detail))
}

impl SentinelConn {
    /// A connection to the master `url` names; nothing is asked before the first command.
    pub fn new(url: &SentinelUrl, manager_config: ConnectionManagerConfig) -> RedisResult<Self> {
        Ok(Self(Arc::new(Shared {
            master_name: url.master.clone(),
            sentinels: url.sentinel_list(),
            db: url.db,
            manager_config,
            lookup: tokio::sync::Mutex::new(url.client()?),
            current: RwLock::new(None),
            failed: RwLock::new(None),
            generations: AtomicU64::new(0),
        })))
    }

    fn current(&self) -> Option<Master> {
        self.0.current.read().ok().and_then(|m| m.clone())
    }

    /// The master in use, asking the sentinels when there is none.
    async fn master(&self) -> RedisResult<Master> {
        if let Some(m) = self.current() {
            return Ok(m);
        }
        let asked = Instant::now();
        let recent_failure = |since: Instant| {
            self.0
                .failed
                .read()
                .ok()
                .and_then(|f| f.clone())
                .filter(|(at, _)| *at >= since)
        };
        if let Some((_, why)) = asked.checked_sub(LOOKUP_BACKOFF).and_then(&recent_failure) {
            return Err(lookup_error(why));
        }
        let mut sentinel = self.0.lookup.lock().await;
        // Whoever held the lock may have just found the master, or just failed to.
        if let Some(m) = self.current() {
            return Ok(m);
        }
        if let Some((_, why)) = recent_failure(asked) {
            return Err(lookup_error(why));
        }
        let found = match tokio::time::timeout(LOOKUP_TIMEOUT, sentinel.async_get_client()).await {
            Ok(Ok(client)) => {
                let addr = client.get_connection_info().addr().to_string();
                ConnectionManager::new_lazy_with_config(client, self.0.manager_config.clone())
                    .map(|conn| (addr, conn))
                    .map_err(|e| e.to_string())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} s", LOOKUP_TIMEOUT.as_secs())),
        };
        match found {
            Ok((addr, conn)) => {
                let master = Master {
                    generation: self.0.generations.fetch_add(1, Ordering::Relaxed),
                    addr,
                    conn,
                };
                tracing::info!(
                    master = %master.addr,
                    name = %self.0.master_name,
                    "redis master found by sentinel"
                );
                if let Ok(mut slot) = self.0.current.write() {
                    *slot = Some(master.clone());
                }
                Ok(master)
            }
            Err(e) => {
                let why = format!(
                    "master {:?} from sentinels {}: {e}",
                    self.0.master_name, self.0.sentinels
                );
                if let Ok(mut slot) = self.0.failed.write() {
                    *slot = Some((Instant::now(), why.clone()));
                }
                Err(lookup_error(why))
            }
        }
    }

    /// Stops using the master of `generation` after `e`, unless another lookup already
    /// replaced it.
    fn forget(&self, generation: u64, addr: &str, e: &RedisError) {
        if let Ok(mut slot) = self.0.current.write() {
            if slot.as_ref().is_some_and(|m| m.generation == generation) {
                tracing::warn!(
                    master = %addr,
                    error = %e,
                    "redis master lost; asking the sentinels again"
                );
                *slot = None;
            }
        }
    }

    async fn command(&self, cmd: &Cmd) -> RedisResult<Value> {
        let mut again = true;
        loop {
            let mut m = self.master().await?;
            match m.conn.req_packed_command(cmd).await {
                Err(e) if master_lost(&e) => {
                    self.forget(m.generation, &m.addr, &e);
                    if again && not_applied(&e) {
                        again = false;
                        continue;
                    }
                    return Err(e);
                }
                done => return done,
            }
        }
    }

    async fn commands(
        &self,
        pipe: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let mut again = true;
        loop {
            let mut m = self.master().await?;
            match m.conn.req_packed_commands(pipe, offset, count).await {
                Err(e) if master_lost(&e) => {
                    self.forget(m.generation, &m.addr, &e);
                    if again && not_applied(&e) {
                        again = false;
                        continue;
                    }
                    return Err(e);
                }
                done => return done,
            }
        }
    }
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> redis::RedisFuture<'a, Value> {
        Box::pin(self.command(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipe: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        Box::pin(self.commands(pipe, offset, count))
    }

    fn get_db(&self) -> i64 {
        self.0.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> SentinelUrl {
        SentinelUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn parses_sentinels_master_db_and_both_passwords() {
        let u = parse(
            "redis+sentinel://app:p%40ss@s1:26380,s2,[::1]:26381/mymaster/2?sentinel_password=sp&sentinel_username=sen",
        );
        assert!(!u.tls);
        assert_eq!(
            u.sentinels,
            vec![
                ("s1".to_string(), 26380),
                ("s2".to_string(), 26379),
                ("::1".to_string(), 26381)
            ]
        );
        assert_eq!(u.master, "mymaster");
        assert_eq!(u.db, 2);
        assert_eq!(u.username.as_deref(), Some("app"));
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        assert_eq!(u.sentinel_username.as_deref(), Some("sen"));
        assert_eq!(u.sentinel_password.as_deref(), Some("sp"));
        assert_eq!(u.sentinel_list(), "s1:26380,s2:26379,[::1]:26381");
        let debug = format!("{u:?}");
        assert!(
            !debug.contains("p@ss") && !debug.contains("\"sp\""),
            "{debug}"
        );
    }

    #[test]
    fn minimal_and_tls_forms() {
        let u = parse("redis+sentinel://127.0.0.1:5000/m");
        assert_eq!(u.sentinels, vec![("127.0.0.1".to_string(), 5000)]);
        assert_eq!(
            (u.db, u.password.clone(), u.username.clone()),
            (0, None, None)
        );
        let u = parse("rediss+sentinel://:secret@h/m/");
        assert!(u.tls);
        assert_eq!(u.password.as_deref(), Some("secret"));
        assert_eq!(u.username, None);
        assert_eq!(u.db, 0);
        assert!(is_sentinel_url("REDIS+SENTINEL://h/m"));
        assert!(!is_sentinel_url("redis://h:6379"));
    }

    #[test]
    fn rejects_what_it_cannot_use_without_echoing_passwords() {
        for (url, want) in [
            ("redis+sentinel://h:1", "no master name"),
            ("redis+sentinel://h:1/", "no master name"),
            ("redis+sentinel://h:x/m", "not a port"),
            ("redis+sentinel://h:0/m", "not a port"),
            ("redis+sentinel://h:1,/m", "empty entry"),
            ("redis+sentinel://:pw@/m", "no sentinel"),
            ("redis+sentinel://:pw@:1/m", "no host"),
            ("redis+sentinel://h/m/x", "not a number"),
            ("redis+sentinel://h/m/1/2", "nothing more"),
            ("redis+sentinel://h/m?password=pw", "unknown option"),
            ("redis+sentinel://[::1/m", "closing ]"),
            ("redis://h/m", "not redis+sentinel"),
        ] {
            let e = SentinelUrl::parse(url).expect_err(url);
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains("pw"), "{url}: {e}");
        }
    }
}
