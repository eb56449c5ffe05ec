//! This program's build id: the SHA-256 of its executable's bytes, so two
//! machines agree on it exactly when they run the same build (a function
//! travels as its offset in the executable, which only the same build
//! resolves to the same code).

use std::io::Read;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::Error;

static BUILD_ID: OnceLock<Result<[u8; 32], String>> = OnceLock::new();

/// The build id, computed once per process (about 10 ms per 20 MB of
/// executable on the 2-core test machine).
pub(crate) fn build_id() -> Result<[u8; 32], Error> {
    BUILD_ID.get_or_init(|| hash_file("/proc/self/exe").map_err(|e| e.to_string())).clone().map_err(|why| {
        Error::Io(std::io::Error::other(format!("reading this program's executable for its build id: {why}")))
    })
}

fn hash_file(path: &str) -> std::io::Result<[u8; 32]> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_build_id_is_stable_within_a_process_and_differs_from_another_binarys() {
        let a = super::build_id().unwrap();
        assert_eq!(a, super::build_id().unwrap());
        assert_ne!(a, super::hash_file("/bin/sh").unwrap());
    }
}
