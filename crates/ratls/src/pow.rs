//! Proof-of-work (PoW), exchanged on the raw TCP stream
//! *before* the TLS handshake, so that a server only spends TLS/attestation
//! work on clients that have burnt some CPU first.
//!
//! Wire format (all integers little-endian), `cocoon.powSimple` /
//! `cocoon.powSimpleResponse` (COCOON-compatible, see docs/cocoon-compat.md):
//!
//! ```text
//! server -> client, 24 bytes: magic:u32 = 0x418e1291 | difficulty_bits:i32 | salt:[u8; 16]
//! client -> server, 12 bytes: magic:u32 = 0x01827319 | nonce:i64
//! ```
//!
//! Rule: `h = SHA-256(salt ‖ nonce.to_le_bytes())`; read `h[0..8]` as a
//! **little-endian** `u64` and count its leading zero bits
//! ([`u64::leading_zeros`]); the nonce is valid iff that count is
//! `>= difficulty_bits`. Note that this is *not* the big-endian leading-zero
//! count of the digest: the zero bits are at the end of `h[0..8]`, starting
//! with the high bits of `h[7]`. Interoperability depends on this exact rule.
//!
//! The client tries nonces `0, 1, 2, ...` in slices of [`SOLVE_SLICE`] hashes
//! and refuses challenges above its maximum difficulty
//! ([`CLIENT_MAX_DIFFICULTY`] by default).
//!
//! The exchange on a stream (`client_handshake`, `server_handshake`) is tokio I/O, behind
//! the `net` feature; the rest is pure.

#[cfg(feature = "net")]
mod exchange;
#[cfg(feature = "net")]
pub use exchange::{client_handshake, server_handshake};

use std::sync::atomic::{AtomicBool, Ordering};

use cocoon_attest::Fault;
use rand::CryptoRng;
use sha2::{Digest, Sha256};

/// Magic of the server's challenge (`cocoon.powSimple#418e1291`).
pub const CHALLENGE_MAGIC: u32 = 0x418e_1291;
/// Magic of the client's response (`cocoon.powSimpleResponse#01827319`).
pub const RESPONSE_MAGIC: u32 = 0x0182_7319;
/// Size of a serialized [`Challenge`] on the wire.
pub const CHALLENGE_LEN: usize = 24;
/// Size of a serialized [`Response`] on the wire.
pub const RESPONSE_LEN: usize = 12;
/// Length of the challenge salt in bytes.
pub const SALT_LEN: usize = 16;
/// Difficulty (leading zero bits) a server asks for by default.
pub const DEFAULT_DIFFICULTY: u32 = 20;
/// Highest difficulty a client agrees to solve by default.
pub const CLIENT_MAX_DIFFICULTY: u32 = 28;
/// Highest difficulty that is meaningful at all (only 64 bits are inspected).
pub const MAX_DIFFICULTY: u32 = 64;
/// Number of hashes the solver tries between cancellation checks.
pub const SOLVE_SLICE: u64 = 100_000;

/// Errors of the PoW exchange.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PowError {
    /// A message did not start with the expected magic.
    #[error("bad pow magic: expected {expected:#010x}, got {got:#010x}")]
    BadMagic {
        /// The magic expected.
        expected: u32,
        /// The magic received.
        got: u32,
    },
    /// The server asked for more work than the client is willing to do.
    #[error(
        "pow difficulty too high: server requested {requested} bits, client maximum is {max} bits"
    )]
    DifficultyTooHigh {
        /// Bits the server asked for.
        requested: u32,
        /// Bits the client accepts.
        max: u32,
    },
    /// The difficulty is outside `0..=64`.
    #[error("invalid pow difficulty {difficulty}: must be between 0 and 64 bits")]
    InvalidDifficulty {
        /// The difficulty received.
        difficulty: i64,
    },
    /// The client's nonce does not meet the difficulty.
    #[error("pow verification failed: nonce does not have enough leading zero bits")]
    VerificationFailed,
    /// The exchange did not complete within the allowed time.
    #[error("pow handshake timed out")]
    Timeout,
    /// Reading from or writing to the stream failed.
    #[error("pow i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// Solving was cancelled before a nonce was found.
    #[error("pow solving was cancelled")]
    Cancelled,
    /// Every `i64` nonce was tried without success (practically unreachable
    /// for sane difficulties).
    #[error("pow nonce space exhausted without a solution")]
    Exhausted,
}

impl PowError {
    /// Whose fault the failure is: a wrong magic, an unmet or out-of-range difficulty and a
    /// nonce that does not solve the challenge are the peer's; transport errors, timeouts and
    /// our own cancelling or giving up are reported and retried ([`Fault::Local`]).
    pub fn fault(&self) -> Fault {
        match self {
            PowError::BadMagic { .. }
            | PowError::DifficultyTooHigh { .. }
            | PowError::InvalidDifficulty { .. }
            | PowError::VerificationFailed => Fault::Peer,
            PowError::Timeout | PowError::Io(_) | PowError::Cancelled | PowError::Exhausted => {
                Fault::Local
            }
        }
    }
}

fn check_difficulty(difficulty: i64) -> Result<u32, PowError> {
    match u32::try_from(difficulty) {
        Ok(d) if d <= MAX_DIFFICULTY => Ok(d),
        _ => Err(PowError::InvalidDifficulty { difficulty }),
    }
}

/// The server's challenge: find a nonce such that
/// [`leading_zero_bits`]`(salt, nonce) >= difficulty_bits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    /// Required number of leading zero bits (`0..=64` for valid challenges).
    pub difficulty_bits: u32,
    /// Random salt chosen by the server.
    pub salt: [u8; SALT_LEN],
}

impl Challenge {
    /// Creates a challenge with a fresh salt from `rng`.
    ///
    /// Fails with [`PowError::InvalidDifficulty`] if `difficulty_bits > 64`.
    pub fn generate<R: CryptoRng + ?Sized>(
        difficulty_bits: u32,
        rng: &mut R,
    ) -> Result<Self, PowError> {
        let difficulty_bits = check_difficulty(i64::from(difficulty_bits))?;
        let mut salt = [0u8; SALT_LEN];
        rng.fill_bytes(&mut salt);
        Ok(Self {
            difficulty_bits,
            salt,
        })
    }

    /// Serializes the challenge to its 24-byte wire form.
    ///
    /// Panics if `difficulty_bits > i32::MAX` (never the case for a
    /// challenge from [`Challenge::generate`] or [`Challenge::parse`]).
    pub fn to_bytes(&self) -> [u8; CHALLENGE_LEN] {
        let difficulty =
            i32::try_from(self.difficulty_bits).expect("pow difficulty does not fit in an i32");
        let mut out = [0u8; CHALLENGE_LEN];
        out[0..4].copy_from_slice(&CHALLENGE_MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&difficulty.to_le_bytes());
        out[8..24].copy_from_slice(&self.salt);
        out
    }

    /// Parses a 24-byte challenge, checking the magic and that the
    /// difficulty is within `0..=64`.
    pub fn parse(bytes: &[u8; CHALLENGE_LEN]) -> Result<Self, PowError> {
        check_magic(bytes, CHALLENGE_MAGIC)?;
        let difficulty = i32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let difficulty_bits = check_difficulty(i64::from(difficulty))?;
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&bytes[8..24]);
        Ok(Self {
            difficulty_bits,
            salt,
        })
    }

    /// Checks a nonce. Constant work: exactly one SHA-256 computation.
    pub fn verify(&self, nonce: i64) -> bool {
        leading_zero_bits(&self.salt, nonce) >= self.difficulty_bits
    }
}

/// Checks the little-endian magic in the first four bytes of a PoW message.
fn check_magic(bytes: &[u8], expected: u32) -> Result<(), PowError> {
    let got = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if got == expected {
        Ok(())
    } else {
        Err(PowError::BadMagic { expected, got })
    }
}

/// The client's answer to a [`Challenge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// The nonce found by the client.
    pub nonce: i64,
}

impl Response {
    /// Serializes the response to its 12-byte wire form.
    pub fn to_bytes(&self) -> [u8; RESPONSE_LEN] {
        let mut out = [0u8; RESPONSE_LEN];
        out[0..4].copy_from_slice(&RESPONSE_MAGIC.to_le_bytes());
        out[4..12].copy_from_slice(&self.nonce.to_le_bytes());
        out
    }

    /// Parses a 12-byte response, checking the magic.
    pub fn parse(bytes: &[u8; RESPONSE_LEN]) -> Result<Self, PowError> {
        check_magic(bytes, RESPONSE_MAGIC)?;
        let mut nonce = [0u8; 8];
        nonce.copy_from_slice(&bytes[4..12]);
        Ok(Self {
            nonce: i64::from_le_bytes(nonce),
        })
    }
}

/// The work measure: `h = SHA-256(salt ‖ nonce.to_le_bytes())`, then
/// the leading zero bits of `h[0..8]` read as a little-endian `u64`
/// (`0..=64`).
pub fn leading_zero_bits(salt: &[u8; SALT_LEN], nonce: i64) -> u32 {
    let mut input = [0u8; SALT_LEN + 8];
    input[..SALT_LEN].copy_from_slice(salt);
    input[SALT_LEN..].copy_from_slice(&nonce.to_le_bytes());
    let hash = Sha256::digest(input);
    let mut chunk = [0u8; 8];
    chunk.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(chunk).leading_zeros()
}

/// Finds the smallest non-negative nonce that satisfies `challenge`, trying
/// `0, 1, 2, ...` in slices of [`SOLVE_SLICE`] hashes and checking `cancel`
/// before each slice. This is CPU-bound; call it from a blocking thread.
///
/// Errors: [`PowError::InvalidDifficulty`] above 64 bits,
/// [`PowError::DifficultyTooHigh`] above `max_difficulty`,
/// [`PowError::Cancelled`] once `cancel` is set.
pub fn solve(
    challenge: &Challenge,
    max_difficulty: u32,
    cancel: &AtomicBool,
) -> Result<i64, PowError> {
    let difficulty = check_difficulty(i64::from(challenge.difficulty_bits))?;
    if difficulty > max_difficulty {
        return Err(PowError::DifficultyTooHigh {
            requested: difficulty,
            max: max_difficulty,
        });
    }
    let mut nonce: i64 = 0;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(PowError::Cancelled);
        }
        for _ in 0..SOLVE_SLICE {
            if challenge.verify(nonce) {
                return Ok(nonce);
            }
            nonce = nonce.checked_add(1).ok_or(PowError::Exhausted)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// Known answers, computed independently with Python 3:
    ///
    /// ```python
    /// import hashlib, struct
    /// salt = bytes(range(16))
    /// def lz(nonce, order):
    ///     h = hashlib.sha256(salt + struct.pack('<q', nonce)).digest()
    ///     return 64 - int.from_bytes(h[:8], order).bit_length()
    /// for d in (8, 12, 16):
    ///     n = next(n for n in range(1 << 30) if lz(n, 'little') >= d)
    ///     print(d, n, lz(n, 'little'), lz(n, 'big'),
    ///           hashlib.sha256(salt + struct.pack('<q', n)).hexdigest())
    /// # le-only: smallest n with lz(n,'little') >= 8 and lz(n,'big') < 8
    /// # be-only: smallest n with lz(n,'big') >= 8 and lz(n,'little') < 8
    /// print([lz(n, 'little') for n in range(5)], lz(-1, 'little'))
    /// ```
    ///
    /// Output:
    ///
    /// ```text
    /// 8 480 8 0 c567414839b0db00ccbc0ea5c1714281b84ba4045fb85face72f65ead04192b0
    /// 12 7012 13 1 7e7aa796bce604004379b953e677868b06f2ca4226d4dd5f4073ed9dda509385
    /// 16 84956 16 1 422212365dcb0000780fae7d0447cee79fa4ba3b9fdb0c64a413eaa403eb611c
    /// le-only: 480 (lz LE 8, BE 0)
    /// be-only: 150 (lz LE 0, BE 8), digest 00c65baf873affdf06849f50...
    /// [1, 0, 0, 0, 1] 1
    /// ```
    const KAT_SALT: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

    pub(super) fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(super) fn kat_challenge(difficulty_bits: u32) -> Challenge {
        Challenge {
            difficulty_bits,
            salt: KAT_SALT,
        }
    }

    #[test]
    fn hash_input_layout_matches_python() {
        let mut input = KAT_SALT.to_vec();
        input.extend_from_slice(&480i64.to_le_bytes());
        assert_eq!(
            hex(&Sha256::digest(&input)),
            "c567414839b0db00ccbc0ea5c1714281b84ba4045fb85face72f65ead04192b0"
        );
    }

    #[test]
    fn known_answer_leading_zero_bits() {
        assert_eq!(
            (0..5)
                .map(|n| leading_zero_bits(&KAT_SALT, n))
                .collect::<Vec<_>>(),
            [1, 0, 0, 0, 1]
        );
        assert_eq!(leading_zero_bits(&KAT_SALT, -1), 1);
        assert_eq!(leading_zero_bits(&KAT_SALT, 480), 8);
        assert_eq!(leading_zero_bits(&KAT_SALT, 7012), 13);
        assert_eq!(leading_zero_bits(&KAT_SALT, 84956), 16);
    }

    #[test]
    fn known_answer_smallest_nonce_8_bits() {
        let challenge = kat_challenge(8);
        assert!(challenge.verify(480));
        for nonce in 0..480 {
            assert!(!challenge.verify(nonce), "nonce {nonce} must fail");
        }
        // 480 has exactly 8 bits, so it is not enough for 9.
        assert!(!kat_challenge(9).verify(480));
    }

    #[test]
    fn solve_finds_known_answers() {
        let cancel = AtomicBool::new(false);
        for (difficulty, expected) in [(0, 0), (1, 0), (8, 480), (12, 7012), (13, 7012)] {
            let got = solve(&kat_challenge(difficulty), CLIENT_MAX_DIFFICULTY, &cancel).unwrap();
            assert_eq!(got, expected, "difficulty {difficulty}");
        }
        assert_eq!(
            solve(&kat_challenge(16), CLIENT_MAX_DIFFICULTY, &cancel).unwrap(),
            84956
        );
    }

    #[test]
    fn little_endian_rule_not_big_endian() {
        // Nonce 480: digest starts c5 67 41 48 39 b0 db 00. As a LE u64 the
        // top byte is h[7] = 0x00 -> 8 leading zeros; as BE it would be 0.
        assert!(kat_challenge(8).verify(480));
        // Nonce 150: digest starts 00 c6 5b af 87 3a ff df. As BE it would
        // have 8 leading zeros; as LE the top byte is 0xdf -> 0.
        assert_eq!(leading_zero_bits(&KAT_SALT, 150), 0);
        assert!(!kat_challenge(8).verify(150));
        assert!(!kat_challenge(1).verify(150));
    }

    #[test]
    fn difficulty_zero_accepts_anything_and_64_is_strict() {
        let zero = kat_challenge(0);
        for nonce in [-1, 0, 1, 150, 480, i64::MAX, i64::MIN] {
            assert!(zero.verify(nonce));
        }
        assert!(!kat_challenge(64).verify(480));
        assert!(!kat_challenge(65).verify(480));
    }

    #[test]
    fn challenge_round_trip_and_layout() {
        let challenge = Challenge {
            difficulty_bits: 20,
            salt: KAT_SALT,
        };
        let bytes = challenge.to_bytes();
        assert_eq!(
            hex(&bytes),
            "91128e4114000000000102030405060708090a0b0c0d0e0f"
        );
        assert_eq!(Challenge::parse(&bytes).unwrap(), challenge);

        let mut rng = rand::rng();
        let a = Challenge::generate(DEFAULT_DIFFICULTY, &mut rng).unwrap();
        let b = Challenge::generate(DEFAULT_DIFFICULTY, &mut rng).unwrap();
        assert_eq!(a.difficulty_bits, 20);
        assert_ne!(a.salt, b.salt);
        assert_eq!(Challenge::parse(&a.to_bytes()).unwrap(), a);
    }

    #[test]
    fn response_round_trip_and_layout() {
        for nonce in [0, 1, 480, -1, i64::MIN, i64::MAX] {
            let response = Response { nonce };
            assert_eq!(Response::parse(&response.to_bytes()).unwrap(), response);
        }
        assert_eq!(
            hex(&Response { nonce: 480 }.to_bytes()),
            "19738201e001000000000000"
        );
        assert_eq!(
            hex(&Response { nonce: -2 }.to_bytes()),
            "19738201feffffffffffffff"
        );
    }

    #[test]
    fn parse_rejects_bad_magic() {
        let mut bytes = kat_challenge(8).to_bytes();
        bytes[0] ^= 1;
        match Challenge::parse(&bytes) {
            Err(PowError::BadMagic { expected, got }) => {
                assert_eq!(expected, CHALLENGE_MAGIC);
                assert_eq!(got, 0x418e_1290);
            }
            other => panic!("unexpected {other:?}"),
        }
        // A response is not a challenge and vice versa.
        let mut as_challenge = [0u8; CHALLENGE_LEN];
        as_challenge[..RESPONSE_LEN].copy_from_slice(&Response { nonce: 1 }.to_bytes());
        assert!(matches!(
            Challenge::parse(&as_challenge),
            Err(PowError::BadMagic { .. })
        ));
        let mut as_response = [0u8; RESPONSE_LEN];
        as_response.copy_from_slice(&kat_challenge(8).to_bytes()[..RESPONSE_LEN]);
        let err = Response::parse(&as_response).unwrap_err();
        assert!(matches!(
            err,
            PowError::BadMagic {
                expected: RESPONSE_MAGIC,
                got: CHALLENGE_MAGIC
            }
        ));
        assert_eq!(
            err.to_string(),
            "bad pow magic: expected 0x01827319, got 0x418e1291"
        );
    }

    #[test]
    fn parse_rejects_invalid_difficulty() {
        let mut bytes = kat_challenge(0).to_bytes();
        for (difficulty, ok) in [(-1i32, false), (i32::MIN, false), (65, false), (64, true)] {
            bytes[4..8].copy_from_slice(&difficulty.to_le_bytes());
            let result = Challenge::parse(&bytes);
            if ok {
                assert_eq!(result.unwrap().difficulty_bits, 64);
            } else {
                match result {
                    Err(PowError::InvalidDifficulty { difficulty: d }) => {
                        assert_eq!(d, i64::from(difficulty))
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert!(matches!(
            Challenge::generate(65, &mut rand::rng()),
            Err(PowError::InvalidDifficulty { difficulty: 65 })
        ));
    }

    #[test]
    fn solve_refuses_too_high_difficulty() {
        let cancel = AtomicBool::new(false);
        let err = solve(&kat_challenge(29), CLIENT_MAX_DIFFICULTY, &cancel).unwrap_err();
        assert!(matches!(
            err,
            PowError::DifficultyTooHigh {
                requested: 29,
                max: 28
            }
        ));
        let msg = err.to_string();
        assert!(msg.contains("29") && msg.contains("28"), "{msg}");
        assert!(matches!(
            solve(&kat_challenge(65), 100, &cancel),
            Err(PowError::InvalidDifficulty { difficulty: 65 })
        ));
    }

    #[test]
    fn solve_can_be_cancelled() {
        let cancelled = AtomicBool::new(true);
        assert!(matches!(
            solve(&kat_challenge(64), 64, &cancelled),
            Err(PowError::Cancelled)
        ));

        // Cancelled from another thread while running.
        let cancel = Arc::new(AtomicBool::new(false));
        let worker = {
            let cancel = Arc::clone(&cancel);
            std::thread::spawn(move || solve(&kat_challenge(64), 64, &cancel))
        };
        std::thread::sleep(Duration::from_millis(20));
        cancel.store(true, Ordering::Relaxed);
        assert!(matches!(worker.join().unwrap(), Err(PowError::Cancelled)));
    }

    #[test]
    fn fault_separates_the_peer_from_us() {
        let peer = [
            PowError::BadMagic {
                expected: CHALLENGE_MAGIC,
                got: 0,
            },
            PowError::DifficultyTooHigh {
                requested: 40,
                max: 28,
            },
            PowError::InvalidDifficulty { difficulty: 65 },
            PowError::VerificationFailed,
        ];
        for e in &peer {
            assert_eq!(e.fault(), Fault::Peer, "{e}");
        }
        let local = [
            PowError::Timeout,
            PowError::Io(std::io::ErrorKind::ConnectionReset.into()),
            PowError::Cancelled,
            PowError::Exhausted,
        ];
        for e in &local {
            assert_eq!(e.fault(), Fault::Local, "{e}");
        }
    }
}
