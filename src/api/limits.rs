//! Limits on what one request may hold: query length, and how long its body may send
//! nothing. A body idle past the limit is cut, so a client that opens uploads and stalls
//! holds no part memory and no connection for longer than that; an upload cut this way
//! keeps its durable parts, and its client resumes from the status.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::StatusCode;
use actix_web::{HttpMessage, ResponseError};
use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use futures_util::Stream;

use super::ApiError;

/// Longest query string accepted, in bytes.
pub const MAX_QUERY: usize = 8 * 1024;

/// Refuses over-long queries, and cuts request bodies idle for `idle` with a `FAIL` 408
/// that closes the connection.
pub fn limit_requests<S, B>(
    idle: Duration,
    mut req: ServiceRequest,
    srv: &S,
) -> LocalBoxFuture<'static, Result<ServiceResponse<BoxBody>, actix_web::Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    S::Future: 'static,
    B: MessageBody + 'static,
{
    if req.query_string().len() > MAX_QUERY {
        let reply = ApiError::with_status(
            StatusCode::URI_TOO_LONG,
            format!("the query is longer than {MAX_QUERY} bytes"),
        )
        .error_response();
        return Box::pin(async move { Ok(req.into_response(reply)) });
    }
    let fired = Arc::new(AtomicBool::new(false));
    let body = IdleBody {
        inner: req.take_payload(),
        idle,
        timer: None,
        fired: fired.clone(),
    };
    req.set_payload(Payload::Stream {
        payload: Box::pin(body),
    });
    let fut = srv.call(req);
    Box::pin(async move {
        let res = fut.await?;
        if !fired.load(Ordering::Relaxed) {
            return Ok(res.map_into_boxed_body());
        }
        let mut reply = ApiError::with_status(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body sent nothing for {}s and was cut; an upload keeps what \
                 was stored: ask for its status and resume",
                idle.as_secs_f64()
            ),
        )
        .error_response();
        reply
            .head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
        Ok(res.into_response(reply))
    })
}

/// A request body that fails once it has sent nothing for `idle`.
struct IdleBody {
    inner: Payload,
    idle: Duration,
    /// Armed while waiting for the next chunk.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    fired: Arc<AtomicBool>,
}

impl Stream for IdleBody {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.fired.load(Ordering::Relaxed) {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(item) => {
                this.timer = None;
                Poll::Ready(item)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.fired.store(true, Ordering::Relaxed);
                        this.timer = None;
                        Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "request body idle",
                        )))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn a_body_that_stalls_fails_after_the_idle_time_and_then_ends() {
        let (sender, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok(b), rx))
        });
        let fired = Arc::new(AtomicBool::new(false));
        let mut body = IdleBody {
            inner: Payload::Stream {
                payload: Box::pin(chunks),
            },
            idle: Duration::from_millis(100),
            timer: None,
            fired: fired.clone(),
        };
        sender.send(Bytes::from_static(b"abc")).unwrap();
        assert_eq!(body.next().await.unwrap().unwrap(), &b"abc"[..]);
        let started = std::time::Instant::now();
        assert!(body.next().await.unwrap().is_err());
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(fired.load(Ordering::Relaxed));
        assert!(body.next().await.is_none(), "a cut body ends");
        drop(sender);
    }
}
