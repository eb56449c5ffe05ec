//! The input side of a map: items pulled from the iterator and cut into
//! batches (sized by measured run time, or fixed), encoded for a process
//! pool (postcard item by item, or the items' bytes back to back when each
//! is one primitive: `codec::fixed`); and what is left of a batch that did
//! not run, cut again.

use std::os::fd::OwnedFd;

use serde::Serialize;

use super::batch::Rest;
use crate::codec::fixed;
use crate::{Error, Mode, batch, codec};

/// How long one batch should run inside its unit.
const TARGET_BATCH_NANOS: u64 = 500_000;
pub(super) const MAX_BATCH: usize = 16_384;
/// A batch's argument stops growing past this many bytes (after its first item).
pub(super) const MAX_BATCH_BYTES: usize = 8 << 20;

/// Picks batch sizes from what earlier batches measured.
pub(super) struct Sizer {
    next: usize,
}

impl Sizer {
    pub(super) fn learn(&mut self, items: usize, nanos: u64) {
        if items == 0 {
            return;
        }
        let per_item = (nanos / items as u64).max(1);
        let ideal = (TARGET_BATCH_NANOS / per_item).clamp(1, MAX_BATCH as u64) as usize;
        // Grow at most 4x per step so one fast outlier cannot jump to the cap.
        self.next = ideal.min(self.next.saturating_mul(4)).max(1);
    }
}

/// A batch ready to send.
pub(super) enum Cut<A> {
    /// Thread mode: the items themselves.
    Local(Vec<A>),
    /// Process mode: the encoded argument (prefix, then the items back to
    /// back), its descriptors, and where each item starts in it.
    Remote { argument: Vec<u8>, fds: Vec<OwnedFd>, offsets: Offsets },
}

impl<A> Cut<A> {
    pub(super) fn len(&self) -> usize {
        match self {
            Cut::Local(items) => items.len(),
            Cut::Remote { offsets, .. } => offsets.len(),
        }
    }
}

/// Where each item of a process batch's argument starts.
#[derive(Debug)]
pub(super) enum Offsets {
    /// postcard items: each one's start, and one more entry: the end.
    Listed(Vec<u32>),
    /// Fixed-width items (`codec::fixed`): `count` of `width` bytes, back
    /// to back after the prefix.
    Fixed { count: u32, width: u32 },
}

impl Offsets {
    /// How many items.
    pub(super) fn len(&self) -> usize {
        match self {
            Offsets::Listed(starts) => starts.len().saturating_sub(1),
            Offsets::Fixed { count, .. } => *count as usize,
        }
    }

    /// Where item `i` starts in the argument (`i == len()`: the end).
    fn at(&self, i: usize) -> Option<usize> {
        match self {
            Offsets::Listed(starts) => starts.get(i).map(|&o| o as usize),
            Offsets::Fixed { count, width } => {
                (i <= *count as usize).then(|| batch::PREFIX_LEN + i * *width as usize)
            }
        }
    }

    /// The offsets of items `from..to` once they are cut out on their own.
    fn cut(&self, from: usize, to: usize) -> Option<Offsets> {
        Some(match self {
            Offsets::Listed(starts) => {
                let shift = starts.get(from)? - batch::PREFIX_LEN as u32;
                Offsets::Listed(starts.get(from..=to)?.iter().map(|o| o - shift).collect())
            }
            Offsets::Fixed { width, .. } => Offsets::Fixed { count: (to - from) as u32, width: *width },
        })
    }
}

/// What the input side hands out next.
pub(super) enum Piece<A> {
    Batch(Cut<A>),
    /// One item that could not be encoded: it fails on its own.
    Failed(Error),
}

/// The input side of a map: the items, cut into batches.
pub(super) struct Feeder<I: Iterator> {
    items: I,
    pub(super) sizer: Sizer,
    /// A fixed batch size set by the user, instead of the sizer's.
    pub(super) fixed: Option<usize>,
    /// An item taken from `items` that belongs to the next batch.
    carry: Option<I::Item>,
    /// An item that failed to encode, to hand out after the batch before it.
    failed: Option<Error>,
    exhausted: bool,
    /// Items are sent in the fixed-width encoding until one has none.
    fixed_width: bool,
}

impl<I: Iterator> Feeder<I>
where
    I::Item: Serialize,
{
    pub(super) fn new(items: I) -> Self {
        Feeder {
            items,
            sizer: Sizer { next: 1 },
            fixed: None,
            carry: None,
            failed: None,
            exhausted: false,
            fixed_width: true,
        }
    }

    /// Bounds on the items not handed out yet.
    pub(super) fn size_hint(&self) -> (usize, Option<usize>) {
        let here = usize::from(self.carry.is_some()) + usize::from(self.failed.is_some());
        let (low, high) = if self.exhausted { (0, Some(0)) } else { self.items.size_hint() };
        (low.saturating_add(here), high.and_then(|h| h.checked_add(here)))
    }

    fn take(&mut self) -> Option<I::Item> {
        if self.carry.is_some() {
            return self.carry.take();
        }
        if self.exhausted {
            return None;
        }
        let next = self.items.next();
        self.exhausted = next.is_none();
        next
    }

    pub(super) fn next_piece(&mut self, mode: Mode, flags: u8, max_bytes: usize) -> Option<Piece<I::Item>> {
        if let Some(e) = self.failed.take() {
            return Some(Piece::Failed(e));
        }
        let want = self.fixed.unwrap_or(self.sizer.next);
        match mode {
            Mode::Thread => {
                let mut items = Vec::with_capacity(want.min(MAX_BATCH));
                items.extend(self.carry.take());
                if !self.exhausted && items.len() < want {
                    // `take` on the iterator itself: a range or a slice
                    // is copied in one go, and nothing past `want` is pulled.
                    let wanted = want - items.len();
                    items.extend(self.items.by_ref().take(wanted));
                    self.exhausted = items.len() < want;
                }
                (!items.is_empty()).then_some(Piece::Batch(Cut::Local(items)))
            }
            Mode::Process => self.encode(want, flags, max_bytes),
        }
    }

    /// Encode up to `want` items into one batch argument: fewer if the
    /// argument grows past `max_bytes` or would carry more descriptors than
    /// a message can.
    fn encode(&mut self, want: usize, flags: u8, max_bytes: usize) -> Option<Piece<I::Item>> {
        if self.fixed_width
            && let Some(piece) = self.encode_fixed(want, flags, max_bytes)
        {
            return Some(piece);
        }
        let mut scope = codec::OutgoingScope::enter(batch::prefix(flags, 0).to_vec());
        let mut offsets: Vec<u32> = Vec::with_capacity(want.min(MAX_BATCH) + 1);
        let mut fds_seen = false;
        while offsets.len() < want && (offsets.is_empty() || scope.buf().len() < max_bytes) {
            let Some(item) = self.take() else { break };
            let (before, mark) = (scope.buf().len(), scope.fd_mark());
            // Most items carry no descriptor: count them only if one did.
            let fds_before = if fds_seen { scope.fd_count() } else { 0 };
            if let Err(e) = scope.append(&item) {
                scope.truncate_fds(fds_before);
                if offsets.is_empty() {
                    return Some(Piece::Failed(e));
                }
                self.failed = Some(e);
                break;
            }
            fds_seen |= scope.added_fds_since(mark);
            if fds_seen && scope.fd_count() > crate::wire::MAX_FDS {
                scope.buf().truncate(before);
                scope.truncate_fds(fds_before);
                if offsets.is_empty() {
                    return Some(Piece::Failed(Error::Codec(format!(
                        "a map item holds more shareable objects than one message can carry ({})",
                        crate::wire::MAX_FDS
                    ))));
                }
                self.carry = Some(item);
                break;
            }
            offsets.push(before as u32);
        }
        if offsets.is_empty() {
            return None;
        }
        let count = offsets.len() as u32;
        let (mut argument, fds) = scope.finish();
        argument[..batch::PREFIX_LEN].copy_from_slice(&batch::prefix(flags, count));
        offsets.push(argument.len() as u32);
        Some(Piece::Batch(Cut::Remote { argument, fds, offsets: Offsets::Listed(offsets) }))
    }

    /// [`Feeder::encode`] in the fixed-width encoding (`codec::fixed`): the
    /// items' bytes back to back, no per-item offsets. `None` if the first
    /// item has no such encoding (or there is none): then no item will be
    /// tried this way again, and postcard takes over from that item. An item
    /// of another shape later ends the batch before it, the same way.
    fn encode_fixed(&mut self, want: usize, flags: u8, max_bytes: usize) -> Option<Piece<I::Item>> {
        let first = self.take()?;
        let mut argument = Vec::with_capacity(batch::PREFIX_LEN + 8 * want.min(MAX_BATCH));
        argument.extend_from_slice(&batch::prefix(0, 0));
        let Ok(kind) = fixed::append(&first, None, &mut argument) else {
            self.fixed_width = false;
            self.carry = Some(first);
            return None;
        };
        let mut count = 1;
        if !self.exhausted {
            // The rest straight from the input (the carry was the first):
            // as many as `want` allows, and items while the bytes are
            // under `max_bytes`.
            let width = kind.width();
            let room = max_bytes.saturating_sub(argument.len()).div_ceil(width);
            let limit = want.saturating_sub(1).min(room);
            let mut pulled = 0;
            for item in self.items.by_ref().take(limit) {
                pulled += 1;
                if fixed::append(&item, Some(kind), &mut argument).is_err() {
                    self.fixed_width = false;
                    self.carry = Some(item);
                    break;
                }
                count += 1;
            }
            self.exhausted = pulled < limit && self.carry.is_none();
        }
        let flags = batch::fixed_flags(flags, kind);
        argument[..batch::PREFIX_LEN].copy_from_slice(&batch::prefix(flags, count as u32));
        let offsets = Offsets::Fixed { count: count as u32, width: kind.width() as u32 };
        Some(Piece::Batch(Cut::Remote { argument, fds: Vec::new(), offsets }))
    }
}

/// The items of a batch that did not run, to cut into new batches.
pub(super) enum Remainder<'o, A> {
    /// Thread mode: the unrun items given back, the first being item `first`.
    Local {
        items: std::vec::IntoIter<A>,
        first: usize,
    },
    /// Process mode: the argument and where its items start.
    Remote {
        argument: Vec<u8>,
        fds: Vec<OwnedFd>,
        offsets: &'o Offsets,
    },
    None,
}

impl<'o, A> Remainder<'o, A> {
    /// `local_first`: the index of the first item thread mode gives back.
    pub(super) fn new(rest: Rest<A>, offsets: &'o Offsets, local_first: usize) -> Self {
        match rest {
            Rest::Local(items) => Remainder::Local { items: items.into_iter(), first: local_first },
            Rest::Remote(Some((argument, fds))) => Remainder::Remote { argument, fds, offsets },
            Rest::Remote(None) => Remainder::None,
        }
    }

    /// Items `from..to` of the batch as a new batch; only what is there
    /// (thread mode does not give back an item stuck on a timed-out thread).
    pub(super) fn cut(&mut self, from: usize, to: usize) -> Option<Cut<A>> {
        match self {
            Remainder::Local { items, first } => {
                let from = from.max(*first);
                if from >= to {
                    return None;
                }
                let taken: Vec<A> = items.by_ref().take(to - from).collect();
                *first = from + taken.len();
                (!taken.is_empty()).then_some(Cut::Local(taken))
            }
            Remainder::Remote { argument, fds, offsets } => {
                if from >= to {
                    return None;
                }
                let (lo, hi) = (offsets.at(from)?, offsets.at(to)?);
                // The pieces keep the batch's flags (a time limit, the encoding).
                let (flags, _) = batch::parse_prefix(argument)?;
                let mut cut = Vec::with_capacity(batch::PREFIX_LEN + hi - lo);
                cut.extend_from_slice(&batch::prefix(flags, (to - from) as u32));
                cut.extend_from_slice(argument.get(lo..hi)?);
                let offsets = offsets.cut(from, to)?;
                // Descriptor indices count across the whole batch: every
                // piece carries them all.
                let fds = fds.iter().filter_map(|fd| fd.try_clone().ok()).collect();
                Some(Cut::Remote { argument: cut, fds, offsets })
            }
            Remainder::None => None,
        }
    }
}
