//! The timer behind hyper's header-read timeout, one per connection.
//!
//! hyper arms a sleep each time it starts reading a request head and drops it once the head is
//! in. With hyper-util's `TokioTimer` each of those is a tokio timer of its own, allocated,
//! filed in the timer wheel (under the wheel's lock) when first polled and taken out again when
//! dropped: every request on a keep-alive connection paid for all three. With this timer the
//! workers run ~890 fewer instructions per hello request (`bench/instructions.sh` A/B,
//! 2026-12-02, ~0.6%); the wall-clock gain was within this machine's noise.
//!
//! This timer keeps one tokio `Sleep` per connection and hands hyper handles to it, each
//! moving it to its own deadline. Deadlines only grow (now + the timeout), and moving a
//! registered tokio sleep later only stores the new deadline: tokio files it again when the
//! old one comes up. The timeout itself is unchanged: a handle is ready at its deadline and not
//! before. A handle that hyper dropped leaves the sleep armed; when it comes up it wakes the
//! connection's task once, for nothing. No crate offers this; it is hyper's `Timer` trait over
//! tokio's `Sleep`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Made for each connection, in its task (a tokio sleep needs the runtime).
#[derive(Clone)]
pub(crate) struct ConnectionTimer {
    sleep: Arc<Mutex<Pin<Box<tokio::time::Sleep>>>>,
}

impl ConnectionTimer {
    pub(crate) fn new() -> Self {
        // Armed at the first head hyper reads, which moves it to its deadline.
        let idle = tokio::time::Instant::now() + Duration::from_secs(86_400);
        ConnectionTimer { sleep: Arc::new(Mutex::new(Box::pin(tokio::time::sleep_until(idle)))) }
    }
}

impl hyper::rt::Timer for ConnectionTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let deadline = tokio::time::Instant::from_std(deadline);
        self.sleep.lock().as_mut().reset(deadline);
        Box::pin(Handle { sleep: self.sleep.clone(), deadline })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        *sleep = self.sleep_until(new_deadline);
    }
}

/// One of hyper's sleeps: the connection's sleep, at this handle's deadline.
struct Handle {
    sleep: Arc<Mutex<Pin<Box<tokio::time::Sleep>>>>,
    deadline: tokio::time::Instant,
}

impl Future for Handle {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut sleep = self.sleep.lock();
        // A newer handle may have moved it (hyper keeps one at a time; this is for the rest).
        if sleep.deadline() != self.deadline {
            sleep.as_mut().reset(self.deadline);
        }
        sleep.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for Handle {}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;

    /// Each handle is ready at its own deadline, not before, however often the sleep was moved;
    /// and one that was dropped does not make the next one ready early. (Real time, with
    /// margins of 700 ms between a check and the deadline it checks.)
    #[tokio::test]
    async fn handles_are_ready_at_their_deadline() {
        let timer = ConnectionTimer::new();
        let timeout = Duration::from_secs(1);
        let step = Duration::from_millis(300);
        for _ in 0..4 {
            let mut head = timer.sleep_until(Instant::now() + timeout);
            assert!(futures::poll!(head.as_mut()).is_pending());
            tokio::time::sleep(step).await;
            assert!(futures::poll!(head.as_mut()).is_pending());
        }
        // 1.2 s in: the first handle's deadline has passed, this one's has not.
        let armed = Instant::now();
        let mut last = timer.sleep_until(armed + timeout);
        tokio::time::sleep(step).await;
        assert!(futures::poll!(last.as_mut()).is_pending());
        tokio::time::timeout(Duration::from_secs(10), last).await.expect("ready at its deadline");
        assert!(armed.elapsed() >= timeout);
    }
}
