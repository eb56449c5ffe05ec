//! Thin safe entry points into the decoders that read bytes written by
//! another process, for the fuzz targets in `fuzz/` and the property tests
//! in `tests/decoders.rs`. Not part of the public API.
//!
//! Each function feeds arbitrary bytes to one decoder and must return
//! normally whatever the bytes are: no panic, no allocation sized by a
//! claimed length, no hang.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use rustix::net::{AddressFamily, SendFlags, SocketFlags, SocketType, socketpair};

use crate::wire::{self, Frame, Kind};

/// Feed `bytes` to the cluster's frame decoders (feature `cluster`), both
/// as they come and signed with a test key, so a hostile agent or broker
/// holding the key is covered too.
#[cfg(feature = "cluster")]
pub fn cluster_frames(bytes: &[u8]) {
    crate::broker::frame::decode_signed(bytes);
}

/// Set the size above which this process sends a task's argument or result
/// in a sealed memfd (the benches measure both sides of it). Workers keep
/// their own (the default).
pub fn set_bulk_threshold(bytes: usize) {
    crate::codec::set_bulk_threshold(bytes);
}

/// Let the workers of pools built from now on lend their big byte results
/// (their parent reads them out of the worker's memory,
/// `process_vm_readv(2)`) where this machine allows it (the default), or
/// not (arenas, to compare).
pub fn allow_lending(on: bool) {
    crate::launch::allow_lending(on);
}

/// Read the next lent result only once its worker has exited (at most 10 s
/// later), so a test can have a worker that lends and exits be gone for
/// sure before its parent reads.
pub fn read_next_lent_result_after_exit() {
    crate::answer::READ_NEXT_LENT_AFTER_EXIT.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Results this worker keeps for its parent to read (called in a task).
pub fn lent_results_waiting() -> usize {
    crate::codec::lend::waiting()
}

/// Drop the arenas this process keeps for its big messages and the peers'
/// arenas it keeps mapped (their descriptors and mappings go once no
/// message in flight holds them), so a test can count what else is left.
pub fn drop_kept_arenas() {
    crate::codec::arena::KEPT.clear();
    crate::codec::arena::MAPPED.clear();
}

/// Most bytes fed through a socket in one go (well under a socket buffer,
/// so the write never blocks with nobody reading yet).
pub const MAX_WIRE_INPUT: usize = 64 * 1024;

/// Write `bytes` into one end of a fresh socket pair, close it, and read
/// frames (payloads of at most `max_payload` bytes) from the other end until
/// it ends. Returns the number of whole frames read.
pub fn wire_frames(bytes: &[u8], max_payload: u64) -> usize {
    let bytes = &bytes[..bytes.len().min(MAX_WIRE_INPUT)];
    let (ours, theirs) = socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)
        .expect("a socket pair");
    let mut sent = 0;
    while sent < bytes.len() {
        sent += rustix::net::send(&theirs, &bytes[sent..], SendFlags::NOSIGNAL).expect("room in the buffer");
    }
    drop(theirs);
    let mut frames = 0;
    // Every byte is already there: a deadline only guards against a reader
    // that would wait for more.
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Ok(frame) = wire::recv(ours.as_fd(), max_payload, Some(deadline)) {
        frames += 1;
        let _ = done(frame);
    }
    frames
}

/// Decode `payload` as a task's Done frame in every shape the parent reads
/// (a single result, a map batch's end, the initializer's unit), and as a
/// map batch's Partial results, each record decoded.
pub fn done_payload(payload: &[u8]) {
    let frame = |kind| Frame { kind, payload: payload.to_vec(), fds: Vec::new(), lent: None };
    let _ = done(frame(Kind::Done));
    let _ = crate::task::decode_done::<()>(frame(Kind::Done));
    let _ = crate::batch::parse_done_body(payload);
    let id = payload.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let mut results = crate::batch::Collector::new(id, 1 << 20);
    if results.partial(frame(Kind::Partial)).is_ok() {
        for mut chunk in results.into_chunks() {
            for _ in 0..chunk.count {
                let Ok((status, body)) = chunk.pop() else { break };
                if status == crate::batch::STATUS_FIXED {
                    let _ = crate::batch::fixed_value::<f64>(body);
                    let _ = crate::batch::fixed_value::<u16>(body);
                }
                let _ = crate::codec::decode::<(u64, String)>(body, Vec::new());
            }
        }
    }
}

fn done(frame: Frame) -> Option<u64> {
    let id = crate::task::done_id(&frame);
    let _ = crate::task::decode_done::<(u64, String, Vec<u8>, Option<i32>)>(frame);
    id
}

/// Parse `payload` as a Task frame's header, a worker Config, and a fork
/// server's Exited report: the other fixed layouts a process reads.
pub fn fixed_layouts(payload: &[u8]) {
    let _ = crate::task::parse_task(payload);
    let _ = crate::launch::WorkerConfig::from_bytes(payload);
    let _ = crate::launch::template::parse_exited(payload);
}

/// Decode `bytes` as task arguments of several types, including shareable
/// objects whose descriptors are missing from the message.
pub fn codec(bytes: &[u8]) {
    let _ = crate::codec::decode::<(u64, String, Vec<u8>, Option<i32>)>(bytes, Vec::new());
    let _ = crate::codec::decode::<Vec<String>>(bytes, Vec::new());
    let _ = crate::codec::decode::<std::collections::HashMap<u32, Vec<u64>>>(bytes, Vec::new());
    let _ = crate::codec::decode::<crate::ipc::Sender<u8>>(bytes, Vec::new());
    let _ = crate::codec::decode::<crate::ipc::Queue<u64>>(bytes, Vec::new());
    let _ = crate::codec::decode::<crate::shm::SharedSlice<u64>>(bytes, Vec::new());
    let _ = crate::codec::decode::<crate::sync::Mutex<u64>>(bytes, Vec::new());
}
