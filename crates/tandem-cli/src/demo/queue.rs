//! The multiprocessing.Queue demo: two producer processes and two consumer
//! processes share one bounded `tandem::ipc::Queue`.
//!
//! Each producer puts its own numbered items; each consumer takes whatever
//! comes next until it takes a stop marker, which the parent puts once the
//! producers are done (one marker per consumer, the usual Python pattern).
//! Every process keeps a count, a sum and an order-independent checksum of
//! what it handled, so the parent can tell that every item was delivered
//! exactly once: none lost, none twice.

use serde::{Deserialize, Serialize};
use tandem::ipc::Queue;

use super::{ms, now_ns, pid, pid_of, shows};

const PRODUCERS: u64 = 2;
const CONSUMERS: usize = 2;
const ITEMS_PER_PRODUCER: u64 = 5000;
/// Small on purpose: a producer that gets ahead waits for room.
const CAPACITY: usize = 64;

#[derive(Serialize, Deserialize)]
enum Item {
    Value { producer: u64, value: u64 },
    Stop,
}

/// Count, sum and checksum of the items one process handled.
#[derive(Serialize, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    count: u64,
    sum: u64,
    checksum: u64,
}

impl Tally {
    fn add(&mut self, value: u64) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(value);
        self.checksum = self.checksum.wrapping_add(scramble(value));
    }

    fn merge(self, other: Tally) -> Tally {
        Tally {
            count: self.count + other.count,
            sum: self.sum.wrapping_add(other.sum),
            checksum: self.checksum.wrapping_add(other.checksum),
        }
    }
}

/// A sum of scrambled values changes if any item is lost or doubled, even
/// where a plain sum would not (losing 3 and doubling 1 and 2, say).
fn scramble(value: u64) -> u64 {
    // The splitmix64 finalizer: every input bit affects every output bit.
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The value of a producer's `i`th item: unique across producers.
fn value_of(producer: u64, i: u64) -> u64 {
    producer * 1_000_000 + i
}

#[derive(Serialize, Deserialize)]
struct Report {
    pid: u32,
    tally: Tally,
    /// Items handled that came from each producer (consumers only).
    per_producer: Vec<u64>,
    first_ns: u64,
    last_ns: u64,
}

fn produce((producer, queue): (u64, Queue<Item>)) -> Result<Report, String> {
    let first_ns = now_ns();
    let mut tally = Tally::default();
    for i in 0..ITEMS_PER_PRODUCER {
        let value = value_of(producer, i);
        queue.put(Item::Value { producer, value }).map_err(|e| e.to_string())?;
        tally.add(value);
    }
    Ok(Report { pid: pid(), tally, per_producer: Vec::new(), first_ns, last_ns: now_ns() })
}

fn consume(queue: Queue<Item>) -> Result<Report, String> {
    let mut tally = Tally::default();
    let mut per_producer = vec![0; PRODUCERS as usize];
    let mut first_ns = None;
    // Until the stop marker.
    while let Item::Value { producer, value } = queue.get().map_err(|e| e.to_string())? {
        first_ns.get_or_insert_with(now_ns);
        tally.add(value);
        per_producer[producer as usize - 1] += 1;
    }
    let last_ns = now_ns();
    Ok(Report { pid: pid(), tally, per_producer, first_ns: first_ns.unwrap_or(last_ns), last_ns })
}

fn unit_failed(who: &str, why: String) -> tandem::Error {
    tandem::Error::Broken(format!("{who} could not use the queue: {why}"))
}

pub fn run() -> Result<(), tandem::Error> {
    let origin = now_ns();
    let queue = Queue::<Item>::bounded(CAPACITY)?;
    out!(
        "{:>8.1} ms  parent (pid {}): made a queue holding at most {CAPACITY} items; starting {CONSUMERS} \
         consumers, then {PRODUCERS} producers of {ITEMS_PER_PRODUCER} items each",
        ms(origin, now_ns()),
        pid()
    );
    // Consumers first: they wait on the empty queue until items arrive.
    let consumers = (1..=CONSUMERS)
        .map(|_| tandem::process::spawn(queue.clone(), consume))
        .collect::<Result<Vec<_>, _>>()?;
    let producers = (1..=PRODUCERS)
        .map(|p| tandem::process::spawn((p, queue.clone()), produce))
        .collect::<Result<Vec<_>, _>>()?;
    let pids = |hs: &[tandem::JoinHandle<Result<Report, String>>]| {
        hs.iter().map(|h| pid_of(h).to_string()).collect::<Vec<_>>().join(", ")
    };
    // Producers may finish before this line is printed: it joins their
    // lines and all are printed in the order they happened.
    let mut events = vec![(
        now_ns(),
        format!("parent: consumers are pids {}; producers are pids {}", pids(&consumers), pids(&producers)),
    )];
    let mut put = Tally::default();
    for (n, h) in producers.into_iter().enumerate() {
        let r = h.join()?.map_err(|e| unit_failed("a producer", e))?;
        events.push((
            r.last_ns,
            format!(
                "producer {} (pid {}): put its {} items (from {:.1} ms on); sum {}, checksum {:016x}",
                n + 1,
                r.pid,
                r.tally.count,
                ms(origin, r.first_ns),
                r.tally.sum,
                r.tally.checksum
            ),
        ));
        put = put.merge(r.tally);
    }
    events.sort_by_key(|(at, _)| *at);
    for (at, line) in events {
        out!("{:>8.1} ms  {line}", ms(origin, at));
    }
    out!(
        "{:>8.1} ms  parent: both producers are done; putting {CONSUMERS} stop markers, one per consumer",
        ms(origin, now_ns())
    );
    for _ in 0..CONSUMERS {
        queue.put(Item::Stop)?;
    }

    let mut consumer_reports = Vec::new();
    for (n, h) in consumers.into_iter().enumerate() {
        consumer_reports.push((n + 1, h.join()?.map_err(|e| unit_failed("a consumer", e))?));
    }
    consumer_reports.sort_by_key(|(_, r)| r.last_ns);
    let mut got = Tally::default();
    for (n, r) in &consumer_reports {
        let from: Vec<String> =
            r.per_producer.iter().enumerate().map(|(p, c)| format!("{c} from producer {}", p + 1)).collect();
        out!(
            "{:>8.1} ms  consumer {n} (pid {}): took its stop marker after {} items ({}, from {:.1} ms on); \
             sum {}, checksum {:016x}",
            ms(origin, r.last_ns),
            r.pid,
            r.tally.count,
            from.join(", "),
            ms(origin, r.first_ns),
            r.tally.sum,
            r.tally.checksum
        );
        got = got.merge(r.tally);
    }
    out!("             (who takes which items is up to the scheduler: it changes from run to run)");

    let mut expected = Tally::default();
    for p in 1..=PRODUCERS {
        (0..ITEMS_PER_PRODUCER).for_each(|i| expected.add(value_of(p, i)));
    }
    out!(
        "\ntotal put: {} items, sum {}, checksum {:016x}\ntotal got: {} items, sum {}, checksum {:016x}",
        put.count,
        put.sum,
        put.checksum,
        got.count,
        got.sum,
        got.checksum
    );
    if got == expected && put == expected && queue.is_empty() {
        out!(
            "every one of the {} items was taken exactly once, by one consumer or the other, and the queue is \
             empty",
            expected.count
        );
    } else {
        out!(
            "unexpected: expected {} items, sum {}, checksum {:016x}",
            expected.count,
            expected.sum,
            expected.checksum
        );
    }
    shows(
        "one queue shared by several processes (multiprocessing.Queue): producers put, consumers take whatever \
         comes next, and every item reaches exactly one consumer",
    );
    Ok(())
}
