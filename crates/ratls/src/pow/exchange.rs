//! The PoW exchange on a stream, before TLS: the server's challenge and the client's
//! response, each side reading exactly its message and nothing more.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{CHALLENGE_LEN, Challenge, PowError, RESPONSE_LEN, Response, solve};

/// Server (acceptor) side: sends a fresh challenge of `difficulty` bits,
/// reads exactly the 12-byte response and verifies it, all within `timeout`.
///
/// Never reads past the response, so the TLS handshake can follow on the
/// same stream.
pub async fn server_handshake<S>(
    stream: &mut S,
    difficulty: u32,
    timeout: Duration,
) -> Result<(), PowError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let challenge = Challenge::generate(difficulty, &mut rand::rng())?;
    tokio::time::timeout(timeout, async {
        stream.write_all(&challenge.to_bytes()).await?;
        stream.flush().await?;
        let mut buf = [0u8; RESPONSE_LEN];
        stream.read_exact(&mut buf).await?;
        let response = Response::parse(&buf)?;
        if challenge.verify(response.nonce) {
            Ok(())
        } else {
            Err(PowError::VerificationFailed)
        }
    })
    .await
    .map_err(|_| PowError::Timeout)?
}

/// Sets the flag when dropped, stopping a solver on a blocking thread.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Solves on tokio's blocking pool; dropping the returned future stops the
/// solver at the next slice boundary.
async fn solve_blocking(challenge: Challenge, max_difficulty: u32) -> Result<i64, PowError> {
    let guard = CancelOnDrop(Arc::new(AtomicBool::new(false)));
    let cancel = Arc::clone(&guard.0);
    let result =
        tokio::task::spawn_blocking(move || solve(&challenge, max_difficulty, &cancel)).await;
    drop(guard);
    match result {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(PowError::Cancelled),
    }
}

/// Client (connector) side: reads exactly the 24-byte challenge, refuses
/// difficulties above `max_difficulty`, solves on a blocking thread and sends
/// the 12-byte response, all within `timeout`. Returns the nonce sent.
///
/// Never reads past the challenge, so the TLS handshake can follow on the
/// same stream. Dropping the future (or timing out) cancels the solver.
pub async fn client_handshake<S>(
    stream: &mut S,
    max_difficulty: u32,
    timeout: Duration,
) -> Result<i64, PowError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::time::timeout(timeout, async {
        let mut buf = [0u8; CHALLENGE_LEN];
        stream.read_exact(&mut buf).await?;
        let challenge = Challenge::parse(&buf)?;
        if challenge.difficulty_bits > max_difficulty {
            return Err(PowError::DifficultyTooHigh {
                requested: challenge.difficulty_bits,
                max: max_difficulty,
            });
        }
        let nonce = solve_blocking(challenge, max_difficulty).await?;
        stream.write_all(&Response { nonce }.to_bytes()).await?;
        stream.flush().await?;
        Ok(nonce)
    })
    .await
    .map_err(|_| PowError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::super::tests::{hex, kat_challenge};
    use super::super::*;
    use super::*;
    use tokio::io::{DuplexStream, duplex};

    /// The client side with the client's maximum difficulty and a 30-second timeout.
    async fn client_answers(client_io: &mut DuplexStream) -> Result<i64, PowError> {
        client_handshake(client_io, CLIENT_MAX_DIFFICULTY, Duration::from_secs(30)).await
    }

    #[test]
    fn cancel_guard_sets_flag_on_drop() {
        let guard = CancelOnDrop(Arc::new(AtomicBool::new(false)));
        let flag = Arc::clone(&guard.0);
        assert!(!flag.load(Ordering::Relaxed));
        drop(guard);
        assert!(flag.load(Ordering::Relaxed));
    }

    #[test]
    fn handshake_futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        let (mut a, mut b) = duplex(64);
        let server = server_handshake(&mut a, 8, Duration::from_secs(1));
        let client = client_handshake(&mut b, 8, Duration::from_secs(1));
        assert_send(&server);
        assert_send(&client);
    }

    #[tokio::test]
    async fn handshake_over_duplex_keeps_following_bytes() {
        let (mut server_io, mut client_io) = duplex(64);
        let timeout = Duration::from_secs(30);
        let server = async {
            server_handshake(&mut server_io, 12, timeout).await?;
            let mut hello = [0u8; 5];
            server_io.read_exact(&mut hello).await?;
            server_io.write_all(b"world").await?;
            Ok::<_, PowError>(hello)
        };
        let client = async {
            let nonce = client_handshake(&mut client_io, CLIENT_MAX_DIFFICULTY, timeout).await?;
            client_io.write_all(b"hello").await?;
            let mut world = [0u8; 5];
            client_io.read_exact(&mut world).await?;
            Ok::<_, PowError>((nonce, world))
        };
        let (server, client) = tokio::join!(server, client);
        assert_eq!(&server.unwrap(), b"hello");
        let (nonce, world) = client.unwrap();
        assert!(nonce >= 0);
        assert_eq!(&world, b"world");
    }

    #[tokio::test]
    async fn server_does_not_read_past_response() {
        let (mut server_io, mut client_io) = duplex(64);
        let client = async {
            let mut buf = [0u8; CHALLENGE_LEN];
            client_io.read_exact(&mut buf).await.unwrap();
            let challenge = Challenge::parse(&buf).unwrap();
            let nonce = solve(&challenge, 64, &AtomicBool::new(false)).unwrap();
            // Response and the first TLS bytes arrive in a single write.
            let mut out = Response { nonce }.to_bytes().to_vec();
            out.extend_from_slice(b"\x16\x03\x01tls");
            client_io.write_all(&out).await.unwrap();
            client_io
        };
        let server = async {
            server_handshake(&mut server_io, 8, Duration::from_secs(30)).await?;
            let mut rest = [0u8; 6];
            server_io.read_exact(&mut rest).await?;
            Ok::<_, PowError>(rest)
        };
        let (_client_io, server) = tokio::join!(client, server);
        assert_eq!(&server.unwrap(), b"\x16\x03\x01tls");
    }

    #[tokio::test]
    async fn client_does_not_read_past_challenge() {
        let (mut server_io, mut client_io) = duplex(64);
        // Challenge and the following bytes arrive in a single write.
        let mut out = kat_challenge(8).to_bytes().to_vec();
        out.extend_from_slice(b"after");
        server_io.write_all(&out).await.unwrap();
        let nonce = client_answers(&mut client_io).await.unwrap();
        assert_eq!(nonce, 480);
        let mut rest = [0u8; 5];
        client_io.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"after");
        let mut response = [0u8; RESPONSE_LEN];
        server_io.read_exact(&mut response).await.unwrap();
        assert_eq!(hex(&response), "19738201e001000000000000");
    }

    #[tokio::test]
    async fn client_refuses_difficulty_above_max() {
        let (mut server_io, mut client_io) = duplex(64);
        server_io
            .write_all(&kat_challenge(29).to_bytes())
            .await
            .unwrap();
        let err = client_answers(&mut client_io).await.unwrap_err();
        assert!(matches!(
            err,
            PowError::DifficultyTooHigh {
                requested: 29,
                max: 28
            }
        ));
        assert_eq!(
            err.to_string(),
            "pow difficulty too high: server requested 29 bits, client maximum is 28 bits"
        );
        // Nothing was sent back.
        drop(client_io);
        let mut rest = Vec::new();
        server_io.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn client_rejects_bad_challenge_magic() {
        let (mut server_io, mut client_io) = duplex(64);
        let mut bytes = kat_challenge(8).to_bytes();
        bytes[3] = 0;
        server_io.write_all(&bytes).await.unwrap();
        let err = client_answers(&mut client_io).await.unwrap_err();
        assert!(matches!(err, PowError::BadMagic { .. }), "{err:?}");
    }

    /// Runs `server_handshake` against a fake client that answers the
    /// challenge with `answer(challenge)`.
    async fn fake_client_sends(
        difficulty: u32,
        answer: impl FnOnce(&Challenge) -> [u8; RESPONSE_LEN],
    ) -> Result<(), PowError> {
        let (mut server_io, mut client_io) = duplex(64);
        let client = async {
            let mut buf = [0u8; CHALLENGE_LEN];
            client_io.read_exact(&mut buf).await.unwrap();
            let challenge = Challenge::parse(&buf).unwrap();
            client_io.write_all(&answer(&challenge)).await.unwrap();
            client_io
        };
        let server = server_handshake(&mut server_io, difficulty, Duration::from_secs(30));
        let (_client_io, result) = tokio::join!(client, server);
        result
    }

    #[tokio::test]
    async fn server_rejects_wrong_nonce() {
        let result = fake_client_sends(20, |challenge| {
            // The salt is random: pick the first nonce that does not pass.
            let nonce = (0..).find(|&n| !challenge.verify(n)).unwrap();
            Response { nonce }.to_bytes()
        })
        .await;
        assert!(
            matches!(result, Err(PowError::VerificationFailed)),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn server_accepts_right_nonce() {
        let result = fake_client_sends(8, |challenge| {
            let nonce = (0..).find(|&n| challenge.verify(n)).unwrap();
            Response { nonce }.to_bytes()
        })
        .await;
        assert!(result.is_ok(), "{result:?}");
    }

    #[tokio::test]
    async fn server_rejects_bad_response_magic() {
        let result = fake_client_sends(20, |_| {
            let mut bytes = Response { nonce: 0 }.to_bytes();
            bytes[0] = 0;
            bytes
        })
        .await;
        assert!(matches!(
            result,
            Err(PowError::BadMagic {
                expected: RESPONSE_MAGIC,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn server_rejects_invalid_difficulty() {
        let (mut server_io, _client_io) = duplex(64);
        assert!(matches!(
            server_handshake(&mut server_io, 65, Duration::from_secs(1)).await,
            Err(PowError::InvalidDifficulty { difficulty: 65 })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn server_times_out_on_silent_client() {
        let (mut server_io, mut client_io) = duplex(64);
        let started = tokio::time::Instant::now();
        let err = server_handshake(&mut server_io, DEFAULT_DIFFICULTY, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(err, PowError::Timeout), "{err:?}");
        assert!(started.elapsed() >= Duration::from_secs(10));
        // The challenge was sent; the client just never answered.
        let mut buf = [0u8; CHALLENGE_LEN];
        client_io.read_exact(&mut buf).await.unwrap();
        assert_eq!(
            Challenge::parse(&buf).unwrap().difficulty_bits,
            DEFAULT_DIFFICULTY
        );
    }

    #[tokio::test(start_paused = true)]
    async fn client_times_out_on_silent_server() {
        let (_server_io, mut client_io) = duplex(64);
        let err = client_handshake(
            &mut client_io,
            CLIENT_MAX_DIFFICULTY,
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, PowError::Timeout), "{err:?}");
    }

    /// Difficulty 64 is practically unsolvable. If the timeout did not
    /// cancel the solver, the runtime's shutdown (which waits for blocking
    /// tasks) would hang this test forever.
    #[tokio::test]
    async fn client_timeout_cancels_unsolvable_challenge() {
        let (mut server_io, mut client_io) = duplex(64);
        server_io
            .write_all(&kat_challenge(64).to_bytes())
            .await
            .unwrap();
        let err = client_handshake(&mut client_io, 64, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, PowError::Timeout), "{err:?}");
    }
}
