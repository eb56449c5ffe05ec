//! The broker (feature `cluster`): every Redis command a cluster pool's
//! driver and its agents use, over the `redis` crate's synchronous
//! connection, and the frames they exchange ([`frame`]).
//!
//! The data, under the prefix `tandem:` of the database in the address:
//! - `tandem:tasks`: a stream of task frames (field `t`), read by the
//!   consumer group `agents`, each agent a consumer named after its node.
//!   An entry read by an agent is *pending* for it (Redis's PEL) until it
//!   is acknowledged; its idle time is its lease clock, reset by the agent's
//!   renewal ([`RENEW`], which renews only entries still its own).
//! - `tandem:answers:<driver>`: a list of answer frames for one driver,
//!   which it pops; it expires if the driver stops popping.
//! - `tandem:driver:<driver>`: the driver's heartbeat, a key that expires a
//!   lease after its last beat; agents drop the tasks of a driver without one.
//! - `tandem:agent:<name>`: an agent's heartbeat (its worker count), and
//!   `tandem:name:<name>`: its claim on the name (two agents of one name
//!   would renew each other's leases).
//! - `tandem:stop`: a counter; agents stop serving when it moves.
//!
//! A node is judged lost by the driver, not by another agent: it finds its
//! own entries idle past the lease (`XPENDING ... IDLE`) and [`REASSIGN`]s
//! each one atomically (still idle? then acknowledge and delete it, and add
//! its next try as a new entry), so a renewal and a reassignment can never
//! both win.

pub(crate) mod build_id;
pub(crate) mod frame;

use std::time::Duration;

use redis::Value;

use crate::Error;

pub(crate) const STREAM: &str = "tandem:tasks";
const GROUP: &str = "agents";
const STOP: &str = "tandem:stop";

/// Renew the caller's leases: for each entry id still pending for consumer
/// `ARGV[1]`, reset its idle time (`XCLAIM` with `JUSTID`, which does not
/// count a delivery); return the ids that are no longer its own.
const RENEW: &str = r"
local lost = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], 'agents', id, id, 1)
  if #p == 1 and p[1][2] == ARGV[1] then
    redis.call('XCLAIM', KEYS[1], 'agents', ARGV[1], 0, id, 'JUSTID')
  else
    lost[#lost + 1] = id
  end
end
return lost
";

/// Take back entry `ARGV[1]` if it is still idle past `ARGV[2]` ms: ack and
/// delete it, then add `ARGV[3]` (its next try) unless empty. Nil when it
/// was renewed or answered meanwhile, else the new entry id or `dropped`.
const REASSIGN: &str = r"
local p = redis.call('XPENDING', KEYS[1], 'agents', 'IDLE', ARGV[2], ARGV[1], ARGV[1], 1)
if #p == 0 then return false end
redis.call('XACK', KEYS[1], 'agents', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
if ARGV[3] == '' then return 'dropped' end
return redis.call('XADD', KEYS[1], '*', 't', ARGV[3])
";

/// An answer to send: (driver, answer frame, the task's stream entry).
pub(crate) type Outgoing = (u128, Vec<u8>, String);

/// An entry idle past the lease, as `XPENDING` tells it.
#[derive(Debug)]
pub(crate) struct Stale {
    pub id: String,
    /// The consumer (agent name) that holds it.
    pub node: String,
}

/// One connection to the broker.
pub(crate) struct Broker {
    con: redis::Connection,
    url: String,
}

fn answers_key(driver: u128) -> String {
    format!("tandem:answers:{driver:032x}")
}

fn driver_key(driver: u128) -> String {
    format!("tandem:driver:{driver:032x}")
}

fn agent_key(name: &str) -> String {
    format!("tandem:agent:{name}")
}

fn claim_key(name: &str) -> String {
    format!("tandem:name:{name}")
}

impl Broker {
    /// Connect to `url` (`redis://host:port/db`, `redis+unix:///path`),
    /// waiting at most `timeout` for it and for each reply after, and make
    /// the task stream's consumer group if there is none.
    pub(crate) fn connect(url: &str, timeout: Duration) -> Result<Broker, Error> {
        let client = redis::Client::open(url).map_err(|e| bad_url(url, e))?;
        let con = client.get_connection_with_timeout(timeout).map_err(|e| unreachable(url, e))?;
        let mut broker = Broker { con, url: url.to_owned() };
        broker.set_timeout(timeout)?;
        let made: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(STREAM)
            .arg(GROUP)
            .arg("$")
            .arg("MKSTREAM")
            .query(&mut broker.con);
        match made {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(broker.failed(e)),
        }
        Ok(broker)
    }

    /// Wait at most `timeout` for any reply.
    pub(crate) fn set_timeout(&mut self, timeout: Duration) -> Result<(), Error> {
        let t = Some(timeout.max(Duration::from_millis(1)));
        self.con.set_read_timeout(t).and_then(|()| self.con.set_write_timeout(t)).map_err(|e| self.failed(e))
    }

    fn failed(&self, e: redis::RedisError) -> Error {
        unreachable(&self.url, e)
    }

    fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, Error> {
        cmd.query(&mut self.con).map_err(|e| unreachable(&self.url, e))
    }

    // --- the driver's side ---

    /// Add task frames to the stream, in one round trip; their entry ids.
    pub(crate) fn add_tasks(&mut self, frames: &[Vec<u8>]) -> Result<Vec<String>, Error> {
        let mut pipe = redis::pipe();
        for frame in frames {
            pipe.cmd("XADD").arg(STREAM).arg("*").arg("t").arg(frame.as_slice());
        }
        pipe.query(&mut self.con).map_err(|e| unreachable(&self.url, e))
    }

    /// Beat the driver's heartbeat: it lasts `ttl`.
    pub(crate) fn heartbeat(&mut self, driver: u128, ttl: Duration) -> Result<(), Error> {
        self.query::<()>(redis::cmd("SET").arg(driver_key(driver)).arg(1).arg("PX").arg(millis(ttl)))
    }

    /// The driver is going: its heartbeat and its answer list.
    pub(crate) fn leave(&mut self, driver: u128) -> Result<(), Error> {
        self.query::<()>(redis::cmd("DEL").arg(driver_key(driver)).arg(answers_key(driver)))
    }

    /// Up to `max` answers for `driver`, waiting up to `wait` for the first.
    pub(crate) fn pop_answers(
        &mut self,
        driver: u128,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let reply: Value = self.query(
            redis::cmd("BLMPOP")
                .arg(format!("{:.3}", wait.max(Duration::from_millis(1)).as_secs_f64()))
                .arg(1)
                .arg(answers_key(driver))
                .arg("LEFT")
                .arg("COUNT")
                .arg(max),
        )?;
        match reply {
            Value::Nil => Ok(Vec::new()),
            Value::Array(mut parts) if parts.len() == 2 => Ok(bulk_strings(parts.pop().unwrap_or_default())),
            other => Err(garbled(&self.url, "BLMPOP", &other)),
        }
    }

    /// Wake the driver's collector out of its wait for answers (an empty
    /// answer, which it skips): the pool is ending.
    pub(crate) fn wake_driver(&mut self, driver: u128) -> Result<(), Error> {
        let list = answers_key(driver);
        let mut pipe = redis::pipe();
        pipe.cmd("RPUSH").arg(&list).arg("").ignore();
        pipe.cmd("PEXPIRE").arg(&list).arg(60_000).ignore();
        pipe.query::<()>(&mut self.con).map_err(|e| unreachable(&self.url, e))
    }

    /// Whether each entry is still in the task stream.
    pub(crate) fn entries_present(&mut self, ids: &[String]) -> Result<Vec<bool>, Error> {
        Ok(self.frames_of(ids)?.into_iter().map(|frame| frame.is_some()).collect())
    }

    /// The frame of each entry still in the task stream (empty if it has
    /// none), in one round trip.
    fn frames_of(&mut self, ids: &[String]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("XRANGE").arg(STREAM).arg(id).arg(id).arg("COUNT").arg(1);
        }
        let found: Vec<Value> = pipe.query(&mut self.con).map_err(|e| unreachable(&self.url, e))?;
        Ok(found
            .into_iter()
            .map(|range| match range {
                Value::Array(mut entries) => entries.pop().and_then(entry).map(|(_, frame)| frame),
                _ => None,
            })
            .collect())
    }

    /// Entries idle (unrenewed) for longer than `lease`, at most `max`.
    pub(crate) fn stale(&mut self, lease: Duration, max: usize) -> Result<Vec<Stale>, Error> {
        let reply: Value = self.query(
            redis::cmd("XPENDING")
                .arg(STREAM)
                .arg(GROUP)
                .arg("IDLE")
                .arg(millis(lease))
                .arg("-")
                .arg("+")
                .arg(max),
        )?;
        let Value::Array(entries) = reply else { return Err(garbled(&self.url, "XPENDING", &reply)) };
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let Value::Array(fields) = entry else { continue };
            let mut fields = fields.into_iter().map(text);
            if let (Some(Some(id)), Some(Some(node))) = (fields.next(), fields.next()) {
                out.push(Stale { id, node });
            }
        }
        Ok(out)
    }

    /// [`REASSIGN`] entry `id` if still idle past `lease`: `None` if it was
    /// renewed or answered meanwhile, else the next try's entry id (`frame`)
    /// or `Some(None)` when there is no next try.
    pub(crate) fn reassign(
        &mut self,
        id: &str,
        lease: Duration,
        frame: Option<&[u8]>,
    ) -> Result<Option<Option<String>>, Error> {
        let reply: Value = self.query(
            redis::cmd("EVAL")
                .arg(REASSIGN)
                .arg(1)
                .arg(STREAM)
                .arg(id)
                .arg(millis(lease))
                .arg(frame.unwrap_or(b"")),
        )?;
        Ok(match reply {
            Value::Nil => None,
            other if frame.is_none() => {
                drop(other);
                Some(None)
            }
            other => Some(text(other)),
        })
    }

    /// Take entries out of the stream and their agents' hands (a cancel, an
    /// answer taken): an agent's next renewal finds them gone.
    pub(crate) fn withdraw(&mut self, ids: &[String]) -> Result<(), Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("XACK").arg(STREAM).arg(GROUP).arg(ids).ignore();
        pipe.cmd("XDEL").arg(STREAM).arg(ids).ignore();
        pipe.query::<()>(&mut self.con).map_err(|e| unreachable(&self.url, e))
    }

    /// Of the entries `ids`, those that no driver waits for any more: gone
    /// from the stream (still pending), or of a driver whose heartbeat is gone.
    pub(crate) fn orphaned(&mut self, ids: &[String]) -> Result<Vec<String>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let drivers: Vec<Option<u128>> =
            self.frames_of(ids)?.into_iter().map(|frame| frame::TaskFrame::driver_of(&frame?)).collect();
        let known: Vec<u128> = drivers.iter().flatten().copied().collect();
        let mut alive = self.drivers_alive(&known)?.into_iter();
        Ok(ids
            .iter()
            .zip(drivers)
            .filter(|(_, driver)| driver.is_none() || !alive.next().unwrap_or(false))
            .map(|(id, _)| id.clone())
            .collect())
    }

    /// Worker slots of the agents alive now (from their heartbeats).
    pub(crate) fn agent_workers(&mut self) -> Result<usize, Error> {
        let names: Vec<String> = self.query(redis::cmd("KEYS").arg("tandem:agent:*"))?;
        if names.is_empty() {
            return Ok(0);
        }
        let counts: Vec<Option<usize>> = self.query(redis::cmd("MGET").arg(&names))?;
        Ok(counts.into_iter().flatten().sum())
    }

    /// Move the stop counter: every agent stops serving.
    pub(crate) fn stop_agents(&mut self) -> Result<(), Error> {
        self.query::<i64>(redis::cmd("INCR").arg(STOP)).map(drop)
    }

    // --- an agent's side ---

    /// Up to `max` new task entries for consumer `node`, waiting up to
    /// `wait` for the first: (entry id, frame).
    pub(crate) fn read_tasks(
        &mut self,
        node: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let reply: Value = self.query(
            redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(node)
                .arg("COUNT")
                .arg(max)
                .arg("BLOCK")
                .arg(millis(wait).max(1))
                .arg("STREAMS")
                .arg(STREAM)
                .arg(">"),
        )?;
        let streams = match reply {
            Value::Nil => return Ok(Vec::new()),
            Value::Array(streams) => streams,
            other => return Err(garbled(&self.url, "XREADGROUP", &other)),
        };
        let mut out = Vec::new();
        for stream in streams {
            let Value::Array(mut parts) = stream else { continue };
            let Some(Value::Array(entries)) = parts.pop() else { continue };
            // An entry without a frame is answered as garbage by the caller.
            out.extend(entries.into_iter().filter_map(entry));
        }
        Ok(out)
    }

    /// [`RENEW`] consumer `node`'s leases on `ids`; the ids it no longer holds.
    pub(crate) fn renew(&mut self, node: &str, ids: &[String]) -> Result<Vec<String>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.query(redis::cmd("EVAL").arg(RENEW).arg(1).arg(STREAM).arg(node).arg(ids))
    }

    /// Whether each driver's heartbeat is there.
    pub(crate) fn drivers_alive(&mut self, drivers: &[u128]) -> Result<Vec<bool>, Error> {
        // An empty pipeline would wait for a reply that never comes.
        if drivers.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for d in drivers {
            pipe.cmd("EXISTS").arg(driver_key(*d));
        }
        pipe.query(&mut self.con).map_err(|e| unreachable(&self.url, e))
    }

    /// Send answers, each to its driver's list (kept `keep` after the last
    /// push), and take their entries out of the stream: one round trip.
    pub(crate) fn answer(
        &mut self,
        answers: &[(u128, Vec<u8>, String)],
        keep: Duration,
    ) -> Result<(), Error> {
        let mut pipe = redis::pipe();
        for (driver, frame, id) in answers {
            let list = answers_key(*driver);
            pipe.cmd("RPUSH").arg(&list).arg(frame.as_slice()).ignore();
            pipe.cmd("PEXPIRE").arg(&list).arg(millis(keep)).ignore();
            pipe.cmd("XACK").arg(STREAM).arg(GROUP).arg(id).ignore();
            pipe.cmd("XDEL").arg(STREAM).arg(id).ignore();
        }
        pipe.query::<()>(&mut self.con).map_err(|e| unreachable(&self.url, e))
    }

    /// Claim the name `node` for this agent (`token`) if no live agent
    /// holds it; false if one does.
    pub(crate) fn claim_name(&mut self, node: &str, token: u128, ttl: Duration) -> Result<bool, Error> {
        let set: Option<String> = self.query(
            redis::cmd("SET")
                .arg(claim_key(node))
                .arg(token.to_string())
                .arg("NX")
                .arg("PX")
                .arg(millis(ttl)),
        )?;
        Ok(set.is_some())
    }

    /// Beat agent `node`'s heartbeat (`workers` slots) and its name's claim,
    /// both lasting `ttl`, and read the stop counter.
    pub(crate) fn agent_beat(&mut self, node: &str, workers: usize, ttl: Duration) -> Result<i64, Error> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(agent_key(node)).arg(workers).arg("PX").arg(millis(ttl)).ignore();
        pipe.cmd("PEXPIRE").arg(claim_key(node)).arg(millis(ttl)).ignore();
        pipe.cmd("GET").arg(STOP);
        let (stop,): (Option<i64>,) = pipe.query(&mut self.con).map_err(|e| unreachable(&self.url, e))?;
        Ok(stop.unwrap_or(0))
    }

    /// Agent `node` is going.
    pub(crate) fn agent_leaves(&mut self, node: &str) -> Result<(), Error> {
        self.query::<()>(redis::cmd("DEL").arg(agent_key(node)).arg(claim_key(node)))
    }
}

/// A stream entry as Redis sends it (`[id, [field, value, ...]]`): its id
/// and its task frame (empty if it has none).
fn entry(entry: Value) -> Option<(String, Vec<u8>)> {
    let Value::Array(mut entry) = entry else { return None };
    let fields = entry.pop();
    let id = entry.pop().and_then(text)?;
    let frame = match fields {
        Some(fields @ Value::Array(_)) => bulk_strings(fields).into_iter().nth(1),
        _ => None,
    };
    Some((id, frame.unwrap_or_default()))
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn bulk_strings(v: Value) -> Vec<Vec<u8>> {
    match v {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|i| match i {
                Value::BulkString(b) => Some(b),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn bad_url(url: &str, e: redis::RedisError) -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!(
            "the broker address {url:?} is not one tandem can use ({e}): give redis://HOST:PORT/DB or redis+unix:///PATH"
        ),
    ))
}

fn unreachable(url: &str, e: redis::RedisError) -> Error {
    let kind =
        if e.is_timeout() { std::io::ErrorKind::TimedOut } else { std::io::ErrorKind::ConnectionAborted };
    Error::Io(std::io::Error::new(
        kind,
        format!("the broker at {url}: {e}: check that Redis runs there and this machine can reach it"),
    ))
}

fn garbled(url: &str, command: &str, reply: &Value) -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!(
            "the broker at {url} answered {command} with {reply:?}, which is not a Redis 7 reply: use Redis 7 or later"
        ),
    ))
}
