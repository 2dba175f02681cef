use super::*;
use std::io;

fn frame(n: usize) -> Outbound {
    Outbound::Frame {
        bytes: Bytes::from(vec![b'x'; n]),
        publication: None,
        change: None,
    }
}

fn tagged(tag: u8, n: usize) -> Outbound {
    Outbound::Frame {
        bytes: Bytes::from(vec![tag; n]),
        publication: None,
        change: None,
    }
}

/// A socket in memory that takes at most `room` more bytes, then would
/// block; an item is written as its payload bytes.
#[derive(Debug, Default)]
struct FakeSocket {
    written: parking_lot::Mutex<Vec<u8>>,
    room: parking_lot::Mutex<usize>,
    broken: std::sync::atomic::AtomicBool,
}

impl FakeSocket {
    fn with_room(room: usize) -> Arc<Self> {
        let s = Arc::new(Self::default());
        *s.room.lock() = room;
        s
    }
    fn add_room(&self, n: usize) {
        *self.room.lock() += n;
    }
    fn written(&self) -> Vec<u8> {
        self.written.lock().clone()
    }
}

impl SocketWriter for FakeSocket {
    fn write_now(&self, items: &[Outbound], offset: &mut usize) -> io::Result<usize> {
        if self.broken.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let mut room = self.room.lock();
        let mut out = self.written.lock();
        for (i, item) in items.iter().enumerate() {
            let bytes: &[u8] = match item {
                Outbound::Frame { bytes, .. } | Outbound::Raw(bytes) => bytes,
                Outbound::Ping => b"P",
            };
            let rest = &bytes[*offset..];
            let n = rest.len().min(*room);
            out.extend_from_slice(&rest[..n]);
            *room -= n;
            if n < rest.len() {
                *offset += n;
                return Ok(i);
            }
            *offset = 0;
        }
        Ok(items.len())
    }
}

#[test]
fn bounds_by_items_and_bytes() {
    let q = SendQueue::new(2, 100);
    assert_eq!(q.push(frame(10)), PushResult::Queued);
    assert_eq!(q.push(frame(10)), PushResult::Queued);
    assert_eq!(q.push(frame(10)), PushResult::Overflow);
    let q = SendQueue::new(10, 15);
    assert_eq!(q.push(frame(10)), PushResult::Queued);
    assert_eq!(q.push(frame(10)), PushResult::Overflow);
}

#[tokio::test]
async fn drains_in_batches_then_reports_close() {
    let q = SendQueue::new(10, 1000);
    q.push(frame(1));
    q.push(frame(2));
    let mut batch = Vec::new();
    assert_eq!(q.next_batch(&mut batch).await, None);
    assert_eq!(batch.len(), 2);
    assert!(q.close(CloseCode::Normal));
    assert!(!q.close(CloseCode::Stale), "first close wins");
    assert_eq!(q.push(frame(1)), PushResult::Closed);
    batch.clear();
    assert_eq!(q.next_batch(&mut batch).await, Some(CloseCode::Normal));
}

/// A task watching for the close must not take the writer's wake-up:
/// the writer waits in `next_batch` while frames arrive one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_watcher_does_not_steal_writer_wakeups() {
    use std::time::Duration;
    let q = Arc::new(SendQueue::new(100, 10_000));
    let watcher = {
        let q = q.clone();
        tokio::spawn(async move { q.closed().await })
    };
    let writer = {
        let q = q.clone();
        tokio::spawn(async move {
            let mut seen = 0;
            let mut batch = Vec::new();
            while q.next_batch(&mut batch).await.is_none() {
                seen += batch.len();
                batch.clear();
            }
            seen
        })
    };
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        q.push(frame(1));
    }
    // Every frame must reach the writer without another push.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !q.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(q.is_empty(), "a frame was left waiting for a wake-up");
    q.close(CloseCode::Normal);
    let seen = tokio::time::timeout(Duration::from_secs(2), writer)
        .await
        .expect("writer ends")
        .expect("join");
    assert_eq!(seen, 50);
    let code = tokio::time::timeout(Duration::from_secs(2), watcher)
        .await
        .expect("watcher woken")
        .expect("join");
    assert_eq!(code, CloseCode::Normal);
}

#[test]
fn slow_consumer_close_drops_backlog() {
    let q = SendQueue::new(10, 1000);
    q.push(frame(5));
    q.close(CloseCode::SlowConsumer);
    assert!(q.is_empty());
}

#[test]
fn a_push_is_written_at_once_when_the_socket_takes_it() {
    let socket = FakeSocket::with_room(1000);
    let q = SendQueue::with_writer(10, 1000, socket.clone());
    assert_eq!(q.push(tagged(b'a', 3)), PushResult::Queued);
    assert_eq!(q.push(tagged(b'b', 2)), PushResult::Queued);
    assert!(q.is_empty(), "written, not queued");
    assert_eq!(socket.written(), b"aaabb");
}

#[test]
fn enqueued_frames_wait_for_flush_and_go_out_in_order() {
    let socket = FakeSocket::with_room(1000);
    let q = SendQueue::with_writer(10, 1000, socket.clone());
    q.enqueue(tagged(b'a', 1));
    q.enqueue(tagged(b'b', 1));
    assert!(socket.written().is_empty());
    q.flush();
    assert_eq!(socket.written(), b"ab");
}

#[tokio::test]
async fn a_full_socket_hands_over_to_the_task_and_resumes_mid_frame() {
    let socket = FakeSocket::with_room(4);
    let q = SendQueue::with_writer(10, 1000, socket.clone());
    q.push(tagged(b'a', 3));
    q.push(tagged(b'b', 3)); // "b" is cut after one byte
    assert_eq!(q.duty().await, Duty::AwaitWritable);
    q.push(tagged(b'c', 2)); // queued behind, not written
    assert_eq!(socket.written(), b"aaab");
    socket.add_room(100);
    q.resume();
    assert_eq!(socket.written(), b"aaabbbcc");
    assert!(q.is_empty());
}

#[tokio::test]
async fn slow_consumer_cut_keeps_a_frame_already_begun() {
    let socket = FakeSocket::with_room(2);
    let q = SendQueue::with_writer(10, 1000, socket.clone());
    q.push(tagged(b'a', 4));
    q.push(tagged(b'b', 4));
    assert_eq!(q.duty().await, Duty::AwaitWritable);
    q.close(CloseCode::SlowConsumer);
    assert_eq!(q.len(), 1, "only the begun frame stays");
    q.finish([Outbound::Raw(Bytes::from_static(b"Z"))]);
    socket.add_room(100);
    q.resume();
    assert_eq!(socket.written(), b"aaaaZ");
    assert_eq!(q.drain_state(), Drain::Done);
}

#[tokio::test]
async fn a_failed_write_is_the_tasks_duty_and_drops_later_frames() {
    let socket = FakeSocket::with_room(100);
    socket
        .broken
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let q = SendQueue::with_writer(10, 1000, socket.clone());
    q.push(frame(3));
    assert_eq!(q.duty().await, Duty::Failed);
    assert_eq!(q.drain_state(), Drain::Failed);
}

#[tokio::test]
async fn closing_is_a_duty_and_final_frames_pass_the_mark() {
    let socket = FakeSocket::with_room(100);
    let q = SendQueue::with_writer(10, 1000, socket.clone());
    q.close(CloseCode::Normal);
    assert_eq!(q.duty().await, Duty::Close(CloseCode::Normal));
    assert_eq!(q.push(tagged(b'x', 1)), PushResult::Closed);
    q.finish([tagged(b'd', 1), Outbound::Raw(Bytes::from_static(b"C"))]);
    assert_eq!(socket.written(), b"dC");
    q.detach();
    assert_eq!(q.drain_state(), Drain::Failed);
}

/// Many threads pushing at once: every frame is written exactly once and
/// each thread's frames keep their order. Each frame is [sender, seq hi,
/// seq lo], so the written bytes say who sent what in which order.
#[test]
fn concurrent_pushers_keep_per_sender_order() {
    const SENDERS: u8 = 4;
    const PER_SENDER: u16 = 2000;
    let socket = FakeSocket::with_room(usize::MAX / 2);
    let q = Arc::new(SendQueue::with_writer(
        100_000,
        usize::MAX / 2,
        socket.clone(),
    ));
    let threads: Vec<_> = (0..SENDERS)
        .map(|t| {
            let q = q.clone();
            std::thread::spawn(move || {
                for seq in 0..PER_SENDER {
                    let [hi, lo] = seq.to_be_bytes();
                    let item = Outbound::Frame {
                        bytes: Bytes::from(vec![t, hi, lo]),
                        publication: None,
                        change: None,
                    };
                    assert_eq!(q.push(item), PushResult::Queued);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("pusher");
    }
    let written = socket.written();
    assert_eq!(written.len(), 3 * SENDERS as usize * PER_SENDER as usize);
    let mut next = [0u16; SENDERS as usize];
    for (i, f) in written.chunks_exact(3).enumerate() {
        let sender = f[0] as usize;
        let seq = u16::from_be_bytes([f[1], f[2]]);
        assert!(
            sender < SENDERS as usize,
            "frame {i}: unknown sender {sender}"
        );
        assert_eq!(
            seq, next[sender],
            "frame {i}: sender {sender} sent {seq} where {} was due",
            next[sender]
        );
        next[sender] += 1;
    }
    assert_eq!(next, [PER_SENDER; SENDERS as usize], "every frame once");
    assert!(q.is_empty());
}

#[tokio::test]
async fn a_replay_waiting_for_room_gets_a_refill_once_the_socket_drained() {
    let socket = FakeSocket::with_room(2);
    let q = SendQueue::with_writer(4, 1000, socket.clone());
    assert!(q.has_room());
    q.push(tagged(b'a', 2));
    q.push(tagged(b'b', 2)); // the socket is full: "b" stays queued
    q.push(tagged(b'c', 2));
    assert!(!q.has_room(), "half of 4 frames queued");
    q.want_room();
    assert_eq!(q.duty().await, Duty::AwaitWritable);
    socket.add_room(100);
    q.resume();
    assert!(q.has_room());
    assert_eq!(
        q.duty().await,
        Duty::Refill,
        "the drained queue asks for more"
    );
    // Asked once, answered once: the next duty is the close.
    q.close(CloseCode::Normal);
    assert_eq!(q.duty().await, Duty::Close(CloseCode::Normal));
    assert!(!q.has_room(), "a closing queue takes no replay");
}

#[tokio::test]
async fn frames_queued_before_a_writer_is_attached_are_written_in_order_once_attached() {
    // An Engine.IO polling session: no writer yet, frames wait in the queue.
    let q = SendQueue::new(100, 10_000);
    for tag in b'1'..=b'5' {
        assert_eq!(q.push(tagged(tag, 3)), PushResult::Queued);
    }
    assert_eq!(q.len(), 5);
    // It upgrades to WebSocket; the socket takes 7 bytes at first.
    let socket = FakeSocket::with_room(7);
    q.attach(socket.clone());
    assert_eq!(socket.written(), b"1112223");
    assert_eq!(q.duty().await, Duty::AwaitWritable);
    q.push(tagged(b'6', 2));
    socket.add_room(100);
    q.resume();
    assert_eq!(socket.written(), b"11122233344455566");
    assert!(q.is_empty());
    // From now on a push is written at once.
    q.push(tagged(b'7', 1));
    assert_eq!(socket.written(), b"111222333444555667");
}

#[tokio::test]
async fn a_detached_writer_leaves_frames_for_the_task_and_the_next_writer() {
    let first = FakeSocket::with_room(4);
    let q = SendQueue::with_writer(100, 10_000, first.clone());
    q.push(tagged(b'1', 3));
    q.push(tagged(b'2', 3));
    // The second frame was begun on the first socket.
    assert_eq!(first.written(), b"1112");
    q.detach_writer();
    q.push(tagged(b'3', 1));
    assert_eq!(
        first.written(),
        b"1112",
        "nothing more goes to a detached writer"
    );
    assert!(q.closing().is_none(), "detaching a writer does not close");
    // The next socket gets the begun frame whole, then the rest, in order.
    let second = FakeSocket::with_room(100);
    q.attach(second.clone());
    assert_eq!(second.written(), b"2223");
    assert!(q.is_empty());
    // Without a writer the connection's task drains the queue itself.
    q.detach_writer();
    q.push(tagged(b'4', 1));
    let mut batch = Vec::new();
    assert_eq!(q.next_batch(&mut batch).await, None);
    assert_eq!(batch.len(), 1);
}

/// A socket that, during its first write, is replaced by `next` (another
/// task attaching the upgraded socket while this one writes).
#[derive(Debug)]
struct ReplacedWhileWriting {
    queue: parking_lot::Mutex<std::sync::Weak<SendQueue>>,
    next: Arc<FakeSocket>,
    inner: Arc<FakeSocket>,
}

impl SocketWriter for ReplacedWhileWriting {
    fn write_now(&self, items: &[Outbound], offset: &mut usize) -> io::Result<usize> {
        let queue = std::mem::take(&mut *self.queue.lock());
        if let Some(q) = queue.upgrade() {
            q.attach(self.next.clone());
        }
        self.inner.write_now(items, offset)
    }
}

#[test]
fn a_writer_replaced_during_a_write_hands_the_rest_to_the_new_one_in_order() {
    let next = FakeSocket::with_room(100);
    let old = Arc::new(ReplacedWhileWriting {
        queue: parking_lot::Mutex::new(std::sync::Weak::new()),
        next: next.clone(),
        // Takes the first frame and part of the second.
        inner: FakeSocket::with_room(4),
    });
    let q = Arc::new(SendQueue::new(100, 10_000));
    *old.queue.lock() = Arc::downgrade(&q);
    q.push(tagged(b'1', 3));
    q.push(tagged(b'2', 3));
    q.push(tagged(b'3', 3));
    q.attach(old.clone());
    assert_eq!(old.inner.written(), b"1112");
    assert_eq!(next.written(), b"222333");
    assert!(q.is_empty());
}

/// A writer as TLS behaves: it takes an item's bytes whole (encrypting
/// them), but when the wire is shut they stay buffered inside it, so it
/// reports that item unfinished with `offset` at its full length; a later
/// call puts the buffered bytes on the wire first and then counts it done.
#[derive(Debug, Default)]
struct BuffersWhenFull {
    /// Items taken but not yet on the wire (at most one).
    buffered: parking_lot::Mutex<Option<Vec<u8>>>,
    wire: parking_lot::Mutex<Vec<u8>>,
    open: std::sync::atomic::AtomicBool,
}

impl SocketWriter for BuffersWhenFull {
    fn write_now(&self, items: &[Outbound], offset: &mut usize) -> io::Result<usize> {
        let open = self.open.load(std::sync::atomic::Ordering::SeqCst);
        let mut buffered = self.buffered.lock();
        if buffered.is_some() {
            if !open {
                return Ok(0);
            }
            self.wire.lock().extend(buffered.take().unwrap_or_default());
        }
        for (i, item) in items.iter().enumerate() {
            let bytes: &[u8] = match item {
                Outbound::Frame { bytes, .. } | Outbound::Raw(bytes) => bytes,
                Outbound::Ping => b"P",
            };
            if *offset == bytes.len() {
                // Taken by an earlier call, flushed just now.
                *offset = 0;
                continue;
            }
            let rest = bytes[*offset..].to_vec();
            if !open {
                *buffered = Some(rest);
                *offset = bytes.len();
                return Ok(i);
            }
            self.wire.lock().extend(rest);
            *offset = 0;
        }
        Ok(items.len())
    }
}

/// `offset == len` round-trips through the queue: the item stays in
/// front, the task is asked to wait for the socket, and after `resume` the
/// item counts done without being written twice, the rest following in
/// order.
#[tokio::test]
async fn an_item_taken_whole_but_not_yet_on_the_wire_is_finished_after_resume() {
    let socket = Arc::new(BuffersWhenFull::default());
    let q = SendQueue::with_writer(10, 1000, socket.clone());
    q.push(tagged(b'a', 3));
    assert_eq!(q.duty().await, Duty::AwaitWritable);
    assert_eq!(q.len(), 1, "the taken item is not done yet");
    q.push(tagged(b'b', 2)); // behind it, not written
    assert!(socket.wire.lock().is_empty());
    socket.open.store(true, std::sync::atomic::Ordering::SeqCst);
    q.resume();
    assert_eq!(*socket.wire.lock(), b"aaabb");
    assert!(q.is_empty());
    assert_eq!(q.drain_state(), Drain::Done);
}

/// A slow-consumer cut keeps such an item (its offset is past 0): its
/// bytes are still flushed whole before the close frame.
#[tokio::test]
async fn a_slow_consumer_cut_keeps_an_item_taken_whole() {
    let socket = Arc::new(BuffersWhenFull::default());
    let q = SendQueue::with_writer(10, 1000, socket.clone());
    q.push(tagged(b'a', 3));
    q.push(tagged(b'b', 3));
    assert_eq!(q.duty().await, Duty::AwaitWritable);
    q.close(CloseCode::SlowConsumer);
    assert_eq!(q.len(), 1, "only the taken item stays");
    q.finish([Outbound::Raw(Bytes::from_static(b"Z"))]);
    socket.open.store(true, std::sync::atomic::Ordering::SeqCst);
    q.resume();
    assert_eq!(*socket.wire.lock(), b"aaaZ");
    assert_eq!(q.drain_state(), Drain::Done);
}
