//! `vmreg healthcheck [URL]`: exits 0 when the server answers 200 on its readiness probe,
//! for container `HEALTHCHECK`s in images that have no curl.

use std::time::Duration;

/// How long the probe waits for an answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The probe URL when none is given: `/readyz` on the port the server listens on
/// (`VMREG_LISTEN`, `ANKA_LISTEN_ADDR`, else 8089), through loopback.
pub fn default_url(env: impl Fn(&str) -> Option<String>) -> String {
    let port = ["VMREG_LISTEN", "ANKA_LISTEN_ADDR"]
        .iter()
        .find_map(|name| env(name))
        .and_then(|listen| {
            let (_, port) = listen.rsplit_once(':')?;
            port.parse::<u16>().ok()
        })
        .unwrap_or(8089);
    format!("http://127.0.0.1:{port}/readyz")
}

/// Probes `url` (or [`default_url`]); returns the exit code: 0 healthy, 1 not.
pub fn run(url: Option<String>) -> i32 {
    let url = url.unwrap_or_else(|| default_url(|name| std::env::var(name).ok()));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vmreg healthcheck: cannot start the runtime: {e}");
            return 1;
        }
    };
    let probe = async {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?;
        let reply = client.get(&url).send().await.map_err(|e| e.to_string())?;
        match reply.status().as_u16() {
            200 => Ok(()),
            other => Err(format!("{url} answered {other}")),
        }
    };
    match runtime.block_on(probe) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("vmreg healthcheck: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_the_port_the_server_listens_on() {
        assert_eq!(default_url(|_| None), "http://127.0.0.1:8089/readyz");
        let env = |name: &str| (name == "ANKA_LISTEN_ADDR").then(|| ":9000".to_string());
        assert_eq!(default_url(env), "http://127.0.0.1:9000/readyz");
    }
}
