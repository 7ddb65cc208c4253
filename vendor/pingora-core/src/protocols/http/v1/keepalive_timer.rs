// Licensed under the Apache License, Version 2.0, as the rest of this crate.

//! The keep-alive idle timer of one downstream connection, kept across its requests.
//!
//! Waiting for the next request with a fresh timeout registered a timer on every
//! request of a busy connection. This timer is registered once and only moved when it
//! fires early (nginx's lazy timers do the same): a deadline that moved later since it
//! was set makes it sleep again until the new one.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::Poll;
use tokio::time::{Instant, Sleep};

/// A connection's keep-alive timer. See the module docs.
#[derive(Debug)]
pub struct KeepaliveTimer {
    sleep: Pin<Box<Sleep>>,
}

impl KeepaliveTimer {
    /// A timer first set to `deadline`.
    pub fn new(deadline: Instant) -> Self {
        KeepaliveTimer {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// Runs `fut` until it completes (`Some`) or `deadline` passes (`None`).
    pub async fn run<F: Future>(&mut self, deadline: Instant, fut: F) -> Option<F::Output> {
        if self.sleep.deadline() > deadline {
            self.sleep.as_mut().reset(deadline);
        }
        let mut fut = pin!(fut);
        poll_fn(|cx| {
            if let Poll::Ready(output) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(output));
            }
            loop {
                match self.sleep.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) if self.sleep.deadline() >= deadline => {
                        return Poll::Ready(None)
                    }
                    // Set for an earlier request: sleep on until this one's deadline.
                    Poll::Ready(()) => self.sleep.as_mut().reset(deadline),
                }
            }
        })
        .await
    }
}
