//! Upload bodies: an async stream of byte frames turned into the blocking [`Read`] the store
//! takes, with the receiving and the storing overlapped.
//!
//! Why not `tokio_util::io::SyncIoBridge`: it blocks on the stream once per `read`, and a read
//! gets at most one frame (HTTP frames are often 8-64 KiB, aws-chunked ones smaller), so the
//! blocking thread parked and woke once per frame and nothing was received while it hashed and
//! wrote. Here a task on the async runtime pulls the frames as they come and packs them into
//! batches of up to [`BATCH`] bytes, handed over through a channel of [`QUEUE`] batches: the store
//! hashes and writes one batch while the next is received, with one hand-off per batch. Memory
//! per upload stays bounded at about `(QUEUE + 2) × BATCH` whatever the object's size.

use std::io::{self, Read};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

/// Size of the batches handed to the store (large enough that the hand-off costs nothing next to
/// hashing and writing them, small enough to keep memory per upload low).
pub const BATCH: usize = 1 << 20;

/// Batches received ahead of the store.
pub const QUEUE: usize = 2;

/// A blocking reader over batches a task on the async runtime receives ahead of it (see the
/// module doc). Dropping it stops the task, which drops the stream.
pub struct StreamReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    done: bool,
}

/// Start receiving `stream` on the current tokio runtime (call it on an async worker or inside
/// the runtime) and return the reader to use on a blocking thread.
///
/// # Panics
/// Outside a tokio runtime.
pub fn stream_reader<S>(stream: S) -> StreamReader
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(pump(stream, tx));
    StreamReader { rx, current: Bytes::new(), done: false }
}

/// Receive frames into batches and send them; stops at the end of the stream, at its first
/// error (sent on), or when the reader is gone.
async fn pump<S>(stream: S, tx: mpsc::Sender<io::Result<Bytes>>)
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    let mut stream = std::pin::pin!(stream);
    // A lone frame is passed on as is (no copy, no batch-sized allocation for small bodies);
    // a second frame starts a batch.
    let mut first: Option<Bytes> = None;
    let mut batch = BytesMut::new();
    loop {
        let frame = tokio::select! {
            frame = stream.next() => frame,
            () = tx.closed() => return, // the store stopped reading
        };
        match frame {
            Some(Ok(frame)) if frame.is_empty() => {}
            Some(Ok(frame)) => {
                if batch.is_empty() && first.is_none() {
                    if frame.len() >= BATCH {
                        if tx.send(Ok(frame)).await.is_err() {
                            return;
                        }
                    } else {
                        first = Some(frame);
                    }
                    continue;
                }
                if batch.is_empty() {
                    batch.reserve(BATCH);
                    if let Some(f) = first.take() {
                        batch.extend_from_slice(&f);
                    }
                }
                // Fill the batch up to BATCH; the rest of the frame starts the next one.
                let mut frame = frame;
                while !frame.is_empty() {
                    let take = (BATCH - batch.len()).min(frame.len());
                    batch.extend_from_slice(&frame.split_to(take));
                    if batch.len() == BATCH {
                        let full = std::mem::replace(&mut batch, BytesMut::with_capacity(BATCH));
                        if tx.send(Ok(full.freeze())).await.is_err() {
                            return;
                        }
                    }
                }
            }
            Some(Err(e)) => {
                // The bytes before the error are useless to the store: the write fails anyway.
                let _ = tx.send(Err(e)).await;
                return;
            }
            None => {
                let rest = first.take().unwrap_or_else(|| batch.split().freeze());
                if !rest.is_empty() {
                    let _ = tx.send(Ok(rest)).await;
                }
                return;
            }
        }
    }
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.current.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                None => self.done = true,
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(sizes: &[usize]) -> (Vec<io::Result<Bytes>>, Vec<u8>) {
        let mut all = Vec::new();
        let mut out = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let f: Vec<u8> = (0..n).map(|j| (i * 31 + j) as u8).collect();
            all.extend_from_slice(&f);
            out.push(Ok(Bytes::from(f)));
        }
        (out, all)
    }

    /// Read everything on a blocking thread, recording each `read`'s size.
    async fn read_all(r: StreamReader) -> (io::Result<Vec<u8>>, Vec<usize>) {
        tokio::task::spawn_blocking(move || {
            let mut r = r;
            let mut out = Vec::new();
            let mut sizes = Vec::new();
            let mut buf = vec![0u8; 4 * BATCH];
            loop {
                match r.read(&mut buf) {
                    Ok(0) => return (Ok(out), sizes),
                    Ok(n) => {
                        sizes.push(n);
                        out.extend_from_slice(&buf[..n]);
                    }
                    Err(e) => return (Err(e), sizes),
                }
            }
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn small_frames_arrive_whole_in_batches() {
        // 16 KiB frames (as HTTP gives), 2.5 batches in all, plus odd and empty frames.
        let mut sizes = vec![16 << 10; 160];
        sizes.extend([0, 7, 1, BATCH + 3, 5]);
        let (items, expected) = frames(&sizes);
        let (got, reads) = read_all(stream_reader(futures::stream::iter(items))).await;
        assert_eq!(got.unwrap(), expected);
        // Every read but the last returns a full batch: frames were packed, not passed one by one.
        let (last, full) = reads.split_last().unwrap();
        assert!(full.iter().all(|&n| n == BATCH), "{reads:?}");
        assert!(*last <= BATCH && *last > 0);
        assert_eq!(reads.iter().sum::<usize>(), expected.len());
    }

    #[tokio::test]
    async fn a_single_small_frame_and_an_empty_body() {
        let (items, expected) = frames(&[4096]);
        let (got, reads) = read_all(stream_reader(futures::stream::iter(items))).await;
        assert_eq!(got.unwrap(), expected);
        assert_eq!(reads, vec![4096]);
        let (got, reads) = read_all(stream_reader(futures::stream::empty())).await;
        assert!(got.unwrap().is_empty() && reads.is_empty());
    }

    #[tokio::test]
    async fn a_stream_error_fails_the_read() {
        let (mut items, _) = frames(&[1000, 1000]);
        items.push(Err(io::Error::other("client went away")));
        let (got, _) = read_all(stream_reader(futures::stream::iter(items))).await;
        assert_eq!(got.unwrap_err().to_string(), "client went away");
    }

    #[tokio::test]
    async fn dropping_the_reader_stops_receiving() {
        // An endless stream: the pump must end (dropping the stream) once the reader is gone.
        struct Flag(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Flag(dropped.clone());
        let endless = futures::stream::repeat_with(move || {
            let _ = &flag;
            Ok(Bytes::from_static(&[1u8; 1024]))
        });
        let r = stream_reader(endless);
        tokio::task::spawn_blocking(move || {
            let mut r = r;
            let mut buf = [0u8; 10];
            assert_eq!(r.read(&mut buf).unwrap(), 10);
        })
        .await
        .unwrap();
        for _ in 0..200 {
            if dropped.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the pump kept the stream after the reader was dropped");
    }
}
