//! The ring's memory ordering under the loom model checker: the real `FrontRing`/`BackRing`
//! code of `src/proto/ring.rs`, with `SharedMem` and `fence` swapped for loom's atomics by
//! `--cfg loom` (see `src/proto/shmem.rs`, module `loom_model`).
//!
//!     RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --test loom -- --nocapture
//!
//! Models (each explores every interleaving and every value a load may legally see, with no
//! preemption bound):
//! * request push-and-check-notify racing the backend's final check: no lost wake-up;
//! * response push-and-check-notify racing the frontend's final check: no lost wake-up;
//! * request and response entries are visible to the consumer once it sees the index.
//!
//! And the proof that the checker can fail: each model run again with a planted bug (the
//! SeqCst fences dropped, or the Release/Acquire index orderings made Relaxed) must be
//! caught. Without `--cfg loom` this file is empty.
#![cfg(loom)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering as StdOrdering};

use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, Ordering};
use xenblk::proto::blkif::{Abi, ReqKind, Request, Response, RwOp, SegList, Segment};
use xenblk::proto::ring::{BackRing, FrontRing, HEADER_SIZE};
use xenblk::proto::shmem::{SharedMem, planted};

/// Tests share the planted-bug switch: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn req(id: u64) -> Request {
    let mut segs = SegList::new();
    segs.push(Segment { gref: 0x100 + id as u32, first_sect: 1, last_sect: 6 }).unwrap();
    Request { id, handle: 3, sector: id * 8 + 1, kind: ReqKind::Rw { op: RwOp::Write, segs } }
}

/// A two-slot ring (the smallest with a wrap-free second slot), x86_64 layout.
fn ring() -> (FrontRing, BackRing) {
    let mem = SharedMem::loom_region(HEADER_SIZE + 2 * 112);
    let front = FrontRing::init(mem, Abi::X86_64).unwrap();
    let back = BackRing::attach(mem, Abi::X86_64).unwrap();
    assert_eq!(front.size(), 2);
    (front, back)
}

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = None;
    b
}

/// Runs `model` under loom; returns the number of executions explored.
fn check(model: fn()) -> usize {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    RUNS.store(0, StdOrdering::SeqCst);
    builder().check(move || {
        RUNS.fetch_add(1, StdOrdering::SeqCst);
        model()
    });
    RUNS.load(StdOrdering::SeqCst)
}

/// Runs `model` with `bug` planted; returns whether loom found an execution that fails
/// with a message containing `want` (the model's own assertion, not some other panic).
fn caught_with(bug: u8, model: fn(), want: &'static str) -> bool {
    static MESSAGES: Mutex<Vec<String>> = Mutex::new(Vec::new());
    MESSAGES.lock().unwrap().clear();
    planted::set(bug);
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        MESSAGES.lock().unwrap_or_else(|e| e.into_inner()).push(info.to_string());
    }));
    let r = std::panic::catch_unwind(|| builder().check(model));
    std::panic::set_hook(prev);
    planted::set(planted::NONE);
    let msgs = MESSAGES.lock().unwrap();
    let hit = msgs.iter().any(|m| m.contains(want));
    if let Some(m) = msgs.iter().find(|m| m.contains(want)) {
        println!("loom caught: {}", m.replace('\n', " "));
    }
    r.is_err() && hit
}

/// The frontend publishes request 2 while the backend, having served request 1, does its
/// final check and goes to sleep. Either the backend saw request 2, or the frontend's push
/// said "notify" (the event channel is then pending and will wake the backend).
fn request_wakeup() {
    let (mut front, mut back) = ring();
    // Prelude (sequential): request 1 pushed, served, answered, consumed.
    assert!(front.put_request(&req(1)));
    assert!(front.push_requests(), "the first request always notifies");
    assert_eq!(back.take_request(0).unwrap().unwrap().unwrap(), req(1));
    assert!(back.put_response(&Response { id: 1, op: 1, status: 0 }));
    back.push_responses();
    assert_eq!(front.take_response().unwrap().map(|r| r.id), Some(1));

    let event = Arc::new(AtomicBool::new(false));
    let ev = event.clone();
    let f = loom::thread::spawn(move || {
        assert!(front.put_request(&req(2)));
        if front.push_requests() {
            ev.store(true, Ordering::SeqCst);
        }
    });
    let mut seen = 0;
    loop {
        while let Some(r) = back.take_request(0).unwrap() {
            assert_eq!(r.unwrap(), req(2));
            seen += 1;
        }
        if !back.final_check_for_requests().unwrap() {
            break;
        }
    }
    f.join().unwrap();
    assert!(seen == 1 || event.load(Ordering::SeqCst), "lost wake-up: request 2 unseen and no notification");
}

/// The backend answers request 2 while the frontend, having consumed response 1, does its
/// final check.
fn response_wakeup() {
    let (mut front, mut back) = ring();
    assert!(front.put_request(&req(1)));
    assert!(front.put_request(&req(2)));
    front.push_requests();
    assert_eq!(back.take_request(0).unwrap().unwrap().unwrap(), req(1));
    assert_eq!(back.take_request(0).unwrap().unwrap().unwrap(), req(2));
    assert!(back.put_response(&Response { id: 1, op: 1, status: 0 }));
    assert!(back.push_responses(), "the first response always notifies");
    assert_eq!(front.take_response().unwrap().map(|r| r.id), Some(1));

    let event = Arc::new(AtomicBool::new(false));
    let ev = event.clone();
    let b = loom::thread::spawn(move || {
        assert!(back.put_response(&Response { id: 2, op: 1, status: 0 }));
        if back.push_responses() {
            ev.store(true, Ordering::SeqCst);
        }
    });
    let mut seen = 0;
    loop {
        while let Some(r) = front.take_response().unwrap() {
            assert_eq!(r, Response { id: 2, op: 1, status: 0 });
            seen += 1;
        }
        if !front.final_check_for_responses().unwrap() {
            break;
        }
    }
    b.join().unwrap();
    assert!(seen == 1 || event.load(Ordering::SeqCst), "lost wake-up: response 2 unseen and no notification");
}

/// Entries are complete when the consumer sees the index: a request read by the backend is
/// exactly the one written, and so is the response read by the frontend.
fn entries_visible() {
    let (mut front, mut back) = ring();
    let b = loom::thread::spawn(move || {
        for _ in 0..2 {
            if let Some(r) = back.take_request(0).unwrap() {
                assert_eq!(r, Ok(req(7)), "request read before it was written");
                assert!(back.put_response(&Response { id: 7, op: 1, status: 0 }));
                back.push_responses();
                return;
            }
            loom::thread::yield_now();
        }
    });
    assert!(front.put_request(&req(7)));
    front.push_requests();
    for _ in 0..2 {
        if let Some(r) = front.take_response().unwrap() {
            assert_eq!(r, Response { id: 7, op: 1, status: 0 }, "response read before it was written");
            break;
        }
        loom::thread::yield_now();
    }
    b.join().unwrap();
}

#[test]
fn request_push_vs_final_check_never_loses_a_wakeup() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let n = check(request_wakeup);
    println!("loom request_wakeup: {n} executions");
    assert!(n > 1);
}

#[test]
fn response_push_vs_final_check_never_loses_a_wakeup() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let n = check(response_wakeup);
    println!("loom response_wakeup: {n} executions");
    assert!(n > 1);
}

#[test]
fn entries_are_visible_once_the_index_is() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let n = check(entries_visible);
    println!("loom entries_visible: {n} executions");
    assert!(n > 1);
}

#[test]
fn planted_missing_full_barrier_is_caught_as_a_lost_wakeup() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert!(caught_with(planted::NO_SEQCST_FENCE, request_wakeup, "lost wake-up"), "request side: not caught");
    assert!(caught_with(planted::NO_SEQCST_FENCE, response_wakeup, "lost wake-up"), "response side: not caught");
    println!("loom planted NO_SEQCST_FENCE: caught on both sides");
}

#[test]
fn planted_relaxed_indices_are_caught_as_stale_entries() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert!(caught_with(planted::RELAXED_INDICES, entries_visible, "before it was written"), "not caught");
    println!("loom planted RELAXED_INDICES: caught");
}
