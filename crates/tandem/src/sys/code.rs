//! Function pointers that stay meaningful in a re-executed copy of this binary.
//!
//! A task is `fn(A) -> R`. A worker process runs the same executable image,
//! but address-space layout randomisation places it elsewhere, so a pointer
//! travels as its offset from an anchor function in the same image. The
//! receiving side accepts an offset only from a peer proven to be its parent
//! (see [`Trusted`]) and only if it lands inside this executable's own code.

use std::sync::OnceLock;

/// A function pointer type that can be sent to a worker as an offset.
///
/// Implemented for every `fn(A) -> R`; sealed so no other type can claim to
/// be a plain code address.
pub trait FnPtr: Copy + Send + Sync + 'static + sealed::Sealed {
    #[doc(hidden)]
    fn addr(self) -> usize;
    #[doc(hidden)]
    /// # Safety
    /// `addr` must be the address of a function of exactly this type.
    unsafe fn from_addr(addr: usize) -> Self;
}

mod sealed {
    pub trait Sealed {}
    impl<A, R> Sealed for fn(A) -> R {}
    impl Sealed for fn() {}
}

impl<A: 'static, R: 'static> FnPtr for fn(A) -> R {
    fn addr(self) -> usize {
        self as usize
    }
    unsafe fn from_addr(addr: usize) -> Self {
        // SAFETY: fn pointers and usize have the same size on every platform
        // tandem supports; the caller guarantees `addr` is a function of this
        // exact type in this image.
        unsafe { std::mem::transmute::<usize, fn(A) -> R>(addr) }
    }
}

impl FnPtr for fn() {
    fn addr(self) -> usize {
        self as usize
    }
    unsafe fn from_addr(addr: usize) -> Self {
        // SAFETY: as above, for the one argument-less function type.
        unsafe { std::mem::transmute::<usize, fn()>(addr) }
    }
}

#[inline(never)]
fn anchor() {}

fn anchor_addr() -> usize {
    anchor as fn() as usize
}

/// The position of `f` relative to this image's anchor: the same in every
/// process running this executable. No system call.
pub fn offset_of<F: FnPtr>(f: F) -> i64 {
    f.addr().wrapping_sub(anchor_addr()) as i64
}

/// Proof that the bytes being decoded came from this process's own parent,
/// which runs the same executable. Only [`super::bootstrap`] creates it.
#[derive(Clone, Copy, Debug)]
pub struct Trusted(pub(super) ());

/// Turn an offset from [`offset_of`] back into a function pointer.
///
/// Returns `None` when the offset does not land in this executable's code
/// (a corrupted or foreign message), so a bad offset is an error, never a jump.
/// The type must be the one the sender encoded; tandem guarantees that by
/// sending a monomorphised trampoline together with the user's function.
/// Reads `/proc/self/maps` (`proc(5)`) once, if the linker's bounds do not
/// apply.
pub fn resolve<F: FnPtr>(_from_parent: &Trusted, offset: i64) -> Option<F> {
    let addr = anchor_addr().wrapping_add(offset as usize);
    if !text_ranges().iter().any(|&(lo, hi)| addr >= lo && addr < hi) {
        return None;
    }
    // SAFETY: `Trusted` proves the offset was produced by `offset_of::<F>` in
    // our parent (same executable, verified by the bootstrap handshake), and
    // the range check above keeps a corrupted offset from leaving our code.
    Some(unsafe { F::from_addr(addr) })
}

// SAFETY: both symbols exist in every executable linked by GNU ld, gold
// or lld, and are declared as bytes whose addresses alone are used.
unsafe extern "C" {
    // Provided by the GNU and LLVM linkers for every executable: the start of
    // the image and the end of its text.
    static __executable_start: u8;
    static etext: u8;
}

/// Compute the code ranges now, so processes forked later inherit them
/// (reads `/proc/self/maps`, `proc(5)`, if needed).
pub fn warm() {
    let _ = text_ranges();
}

/// Where this image's code is: the linker's own bounds when the anchor lies
/// within them (tandem linked into the executable), else the executable
/// mappings of the file that holds [`anchor`], from /proc/self/maps.
fn text_ranges() -> &'static [(usize, usize)] {
    static RANGES: OnceLock<Vec<(usize, usize)>> = OnceLock::new();
    RANGES.get_or_init(|| {
        // Only the addresses of the linker's symbols are taken, never read.
        let (lo, hi) = (&raw const __executable_start as usize, &raw const etext as usize);
        if (lo..hi).contains(&anchor_addr()) {
            return vec![(lo, hi)];
        }
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let anchor = anchor_addr();
        let parsed: Vec<(usize, usize, bool, &str)> = maps
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let range = parts.next()?;
                let perms = parts.next()?;
                let path = parts.nth(3).unwrap_or("");
                let (lo, hi) = range.split_once('-')?;
                let lo = usize::from_str_radix(lo, 16).ok()?;
                let hi = usize::from_str_radix(hi, 16).ok()?;
                Some((lo, hi, perms.contains('x'), path))
            })
            .collect();
        let Some(&(_, _, _, image)) = parsed.iter().find(|m| anchor >= m.0 && anchor < m.1) else {
            return Vec::new();
        };
        parsed.iter().filter(|m| m.2 && m.3 == image).map(|m| (m.0, m.1)).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn double(x: u64) -> u64 {
        x * 2
    }

    #[test]
    fn round_trips_inside_the_image() {
        let off = offset_of(double as fn(u64) -> u64);
        let f: fn(u64) -> u64 = resolve(&Trusted(()), off).expect("inside text");
        assert_eq!(f(21), 42);
    }

    #[test]
    fn rejects_offsets_outside_the_image() {
        let heap = Box::new(0u8);
        let off = (&*heap as *const u8 as usize).wrapping_sub(anchor_addr()) as i64;
        assert!(resolve::<fn(u64) -> u64>(&Trusted(()), off).is_none());
        assert!(resolve::<fn(u64) -> u64>(&Trusted(()), i64::MAX).is_none());
    }
}
