//! The multiprocessing.Pipe demo: a parent and a child process talk both
//! ways through two `tandem::ipc` channels, one for each direction (a Pipe in
//! Python is such a pair).
//!
//! The parent asks the child questions; the child answers each one, stamping
//! when it got the question and when it replied. Then the parent drops its
//! sender: the child's `recv` reports the channel disconnected (Python's
//! `EOFError`), and the child says goodbye and ends.
//!
//! Everything is printed by the parent, from the stamps in the messages, so
//! the lines come out whole and in the order things happened.

use serde::{Deserialize, Serialize};
use tandem::ipc::{Receiver, RecvError, Sender};

use super::{ms, now_ns, pid, pid_of, shows};

const QUESTIONS: [u64; 4] = [3, 12, 1000, 65_536];

/// Child to parent.
#[derive(Serialize, Deserialize)]
enum FromChild {
    /// The first thing the child says.
    Hello { pid: u32, ppid: u32, at_ns: u64 },
    /// An answer to the question `n`: its square.
    Answer { n: u64, square: u64, pid: u32, got_ns: u64, replied_ns: u64 },
    /// The parent's channel disconnected; the child is about to return.
    Goodbye { answered: u32, at_ns: u64, why: String },
}

/// The child: say hello, answer questions until the parent hangs up.
fn child((questions, replies): (Receiver<u64>, Sender<FromChild>)) -> u32 {
    let me = pid();
    let hello = FromChild::Hello { pid: me, ppid: super::ppid(), at_ns: now_ns() };
    if replies.send(hello).is_err() {
        return 0;
    }
    let mut answered = 0;
    let why = loop {
        match questions.recv() {
            Ok(n) => {
                let got_ns = now_ns();
                let answer = FromChild::Answer { n, square: n * n, pid: me, got_ns, replied_ns: now_ns() };
                if replies.send(answer).is_err() {
                    break "the parent stopped listening".to_string();
                }
                answered += 1;
            }
            Err(RecvError::Disconnected) => {
                break "my recv() says disconnected: the parent hung up".to_string();
            }
            Err(e) => break format!("my recv() failed: {e}"),
        }
    };
    let _ = replies.send(FromChild::Goodbye { answered, at_ns: now_ns(), why });
    answered
}

pub fn run() -> Result<(), tandem::Error> {
    let origin = now_ns();
    let me = pid();
    let (to_child, questions) = tandem::ipc::channel::<u64>()?;
    let (replies, from_child) = tandem::ipc::channel::<FromChild>()?;

    out!(
        "{:>8.1} ms  parent (pid {me}): made two channels, parent->child and child->parent; starting the child",
        ms(origin, now_ns())
    );
    // The child gets the receiving end of one channel and the sending end of
    // the other; their descriptors travel with the spawn's argument.
    let handle = tandem::process::spawn((questions, replies), child)?;
    out!("{:>8.1} ms  parent: child started, pid {}", ms(origin, now_ns()), pid_of(&handle));

    let disconnected = |e: RecvError| tandem::Error::Broken(format!("the child's channel ended early: {e}"));
    match from_child.recv().map_err(disconnected)? {
        FromChild::Hello { pid, ppid, at_ns } => {
            out!("{:>8.1} ms  child (pid {pid}): hello, my parent is pid {ppid}", ms(origin, at_ns))
        }
        _ => out!("             unexpected: the child's first message was not hello"),
    }

    for n in QUESTIONS {
        let sent_ns = now_ns();
        if to_child.send(n).is_err() {
            out!("             unexpected: the child stopped listening before question {n}");
            break;
        }
        out!("{:>8.1} ms  parent: sent question {n}", ms(origin, sent_ns));
        match from_child.recv().map_err(disconnected)? {
            FromChild::Answer { n: asked, square, pid, got_ns, replied_ns } => {
                let back = now_ns();
                let us = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e3;
                out!(
                    "{:>8.1} ms  child (pid {pid}): got question {asked} ({:.0} us after it was sent), replied {square}",
                    ms(origin, got_ns),
                    us(sent_ns, got_ns)
                );
                let verdict = if asked == n && square == n * n { "right" } else { "unexpected: wrong" };
                out!(
                    "{:>8.1} ms  parent: got answer {square} ({verdict}; {:.0} us after it was sent); \
                     round trip {:.0} us",
                    ms(origin, back),
                    us(replied_ns, back),
                    us(sent_ns, back)
                );
            }
            _ => out!("             unexpected: the child sent something other than an answer"),
        }
    }

    out!("{:>8.1} ms  parent: dropping my sender: no more questions", ms(origin, now_ns()));
    drop(to_child);
    match from_child.recv().map_err(disconnected)? {
        FromChild::Goodbye { answered, at_ns, why } => {
            out!("{:>8.1} ms  child: {why}; goodbye after {answered} answers", ms(origin, at_ns))
        }
        _ => out!("             unexpected: the child sent something other than goodbye"),
    }
    let answered = handle.join()?;
    out!("{:>8.1} ms  parent: joined the child; it returned {answered}", ms(origin, now_ns()));
    // The child's sender went with it: our receiver is now disconnected too.
    match from_child.recv() {
        Err(RecvError::Disconnected) => out!(
            "{:>8.1} ms  parent: my recv() says disconnected too: the child's sender is gone",
            ms(origin, now_ns())
        ),
        _ => out!("             unexpected: the child's channel is still open after it ended"),
    }
    shows(
        "two processes talk through a pair of channels (multiprocessing.Pipe): each message is a value sent \
         by one process and received whole by the other, and when one side's sender is gone the other side's \
         recv() says disconnected instead of waiting forever",
    );
    Ok(())
}
