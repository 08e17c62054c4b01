//! [`WalletSender`]: queued internal messages sent through a wallet over any [`Chain`], the
//! same external message resent until the wallet's seqno moves past it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tycho_types::models::StdAddr;

use super::{MAX_MESSAGES, OutMsg, Wallet, WalletError};
use crate::chain::{AccountStatus, Chain};
use crate::codec;
use crate::keys::SigningKey;

/// What [`WalletSender::tick`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderEvent {
    /// A new external message was sent.
    Sent {
        /// Its seqno.
        seqno: u32,
        /// How many internal messages it carries.
        messages: usize,
    },
    /// The in-flight message was sent again (same BOC).
    Resent {
        /// Its seqno.
        seqno: u32,
    },
    /// The seqno advanced: the in-flight message was accepted.
    Confirmed {
        /// Its seqno.
        seqno: u32,
        /// The internal messages it carried.
        messages: Vec<OutMsg>,
    },
    /// `valid_until` passed without acceptance; its messages went back to the queue front.
    Expired {
        /// Its seqno.
        seqno: u32,
    },
}

#[derive(Debug, Clone)]
struct InFlight {
    seqno: u32,
    valid_until: u32,
    boc: Vec<u8>,
    msgs: Vec<OutMsg>,
    last_sent: Instant,
}

/// Sends queued internal messages through a wallet, resending until confirmed.
pub struct WalletSender<C: Chain> {
    chain: C,
    wallet: Wallet,
    key: SigningKey,
    address: StdAddr,
    queue: VecDeque<OutMsg>,
    in_flight: Option<InFlight>,
    /// How long a message stays valid (seconds; default 3600).
    pub ttl_secs: u32,
    /// Resend interval for an unconfirmed message (default 30 s).
    pub resend_every: Duration,
}

impl<C: Chain> std::fmt::Debug for WalletSender<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalletSender")
            .field("address", &self.address.to_string())
            .field("queued", &self.queue.len())
            .field("in_flight", &self.in_flight.as_ref().map(|i| i.seqno))
            .finish_non_exhaustive()
    }
}

impl<C: Chain> WalletSender<C> {
    /// A sender for `wallet` signed with `key`.
    pub fn new(chain: C, wallet: Wallet, key: SigningKey) -> Result<Self, WalletError> {
        let address = wallet.address()?;
        Ok(Self {
            chain,
            wallet,
            key,
            address,
            queue: VecDeque::new(),
            in_flight: None,
            ttl_secs: 3600,
            resend_every: Duration::from_secs(30),
        })
    }

    /// The wallet address.
    pub fn address(&self) -> &StdAddr {
        &self.address
    }

    /// The chain client.
    pub fn chain(&self) -> &C {
        &self.chain
    }

    /// Queues an internal message.
    pub fn enqueue(&mut self, msg: OutMsg) {
        self.queue.push_back(msg);
    }

    /// Whether a message to `to` is waiting (queued or in flight).
    pub fn pending_to(&self, to: &StdAddr) -> bool {
        self.queue
            .iter()
            .chain(self.in_flight.iter().flat_map(|i| &i.msgs))
            .any(|m| m.to == *to)
    }

    /// Messages waiting (queued or in flight).
    pub fn pending(&self) -> usize {
        self.queue.len() + self.in_flight.as_ref().map_or(0, |i| i.msgs.len())
    }

    /// One step: read the wallet state, settle the in-flight message (confirmed, expired, or
    /// resent when `resend_every` elapsed), then send the next batch if nothing is in flight.
    /// `now` is the local unix time; the chain's own time wins when it reports one.
    pub async fn tick(&mut self, now: u64) -> Result<Vec<SenderEvent>, WalletError> {
        let mut events = Vec::new();
        let st = self.chain.account_state(&self.address).await?;
        let active = st.status == AccountStatus::Active;
        let seqno = match (&st.data, active) {
            (Some(d), true) => self.wallet.seqno_from_data(d)?,
            _ => 0,
        };
        let chain_now = st.sync_utime.unwrap_or(now).max(now);

        if let Some(f) = self.in_flight.take() {
            if seqno > f.seqno {
                events.push(SenderEvent::Confirmed {
                    seqno: f.seqno,
                    messages: f.msgs,
                });
            } else if chain_now > f.valid_until as u64 {
                for m in f.msgs.into_iter().rev() {
                    self.queue.push_front(m);
                }
                events.push(SenderEvent::Expired { seqno: f.seqno });
            } else if f.last_sent.elapsed() >= self.resend_every {
                self.chain.send_boc(&f.boc).await?;
                events.push(SenderEvent::Resent { seqno: f.seqno });
                self.in_flight = Some(InFlight {
                    last_sent: Instant::now(),
                    ..f
                });
            } else {
                self.in_flight = Some(f);
            }
        }

        if self.in_flight.is_none() && !self.queue.is_empty() {
            let n = self.queue.len().min(MAX_MESSAGES);
            let msgs: Vec<OutMsg> = self.queue.drain(..n).collect();
            let valid_until = (chain_now + self.ttl_secs as u64).min(u32::MAX as u64) as u32;
            let ext =
                self.wallet
                    .external_transfer(&self.key, seqno, valid_until, &msgs, !active)?;
            let boc = codec::encode_boc(&ext);
            if let Err(e) = self.chain.send_boc(&boc).await {
                for m in msgs.into_iter().rev() {
                    self.queue.push_front(m);
                }
                return Err(e.into());
            }
            events.push(SenderEvent::Sent { seqno, messages: n });
            self.in_flight = Some(InFlight {
                seqno,
                valid_until,
                boc,
                msgs,
                last_sent: Instant::now(),
            });
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::fake::FakeChain;
    use tycho_types::cell::{Cell, CellBuilder, HashBytes};

    use crate::wallet::WalletVersion;

    impl Wallet {
        pub(super) fn initial_data_with_seqno(&self, seqno: u32) -> Cell {
            let d = self.initial_data().unwrap();
            let mut s = d.as_slice().unwrap();
            let mut b = CellBuilder::new();
            if self.version == WalletVersion::V5R1 {
                b.store_bit(s.load_bit().unwrap()).unwrap();
            }
            s.load_u32().unwrap();
            b.store_u32(seqno).unwrap();
            b.store_slice(s).unwrap();
            b.build().unwrap()
        }
    }

    fn key() -> SigningKey {
        SigningKey::from_seed(&[3u8; 32]).unwrap()
    }

    #[tokio::test]
    async fn pending_to_sees_queued_and_in_flight_messages_until_confirmed() {
        let k = key();
        let w = Wallet::v4r2(k.public_key(), 0);
        let chain = FakeChain::default();
        let mut s = WalletSender::new(chain.clone(), w.clone(), k).unwrap();
        let (to, other) = (
            StdAddr::new(0, HashBytes([9; 32])),
            StdAddr::new(0, HashBytes([8; 32])),
        );
        assert!(!s.pending_to(&to));
        s.enqueue(OutMsg::new(to.clone(), 1, None));
        assert!(s.pending_to(&to) && !s.pending_to(&other), "queued");
        s.tick(1000).await.unwrap();
        assert!(s.pending_to(&to), "in flight");
        chain.set_wallet(&s.address().clone(), w.initial_data_with_seqno(1));
        s.tick(1001).await.unwrap();
        assert!(!s.pending_to(&to), "confirmed");
    }

    #[tokio::test]
    async fn sender_resends_same_boc_until_seqno_advances() {
        let k = key();
        let w = Wallet::v4r2(k.public_key(), 0);
        let chain = FakeChain::default();
        let mut s = WalletSender::new(chain.clone(), w.clone(), k).unwrap();
        s.resend_every = Duration::ZERO;
        let to = StdAddr::new(0, HashBytes([9; 32]));
        for i in 0..6 {
            s.enqueue(OutMsg::new(to.clone(), i, None));
        }
        // uninitialised wallet: seqno 0 with state init, 4 messages
        let ev = s.tick(1000).await.unwrap();
        assert_eq!(
            ev,
            vec![SenderEvent::Sent {
                seqno: 0,
                messages: 4
            }]
        );
        let first = chain.sent().last().unwrap().clone();
        let msg: tycho_types::models::OwnedMessage =
            crate::codec::decode_boc(&first).unwrap().parse().unwrap();
        assert!(msg.init.is_some());
        // not yet accepted -> resent, byte-identical
        let ev = s.tick(1001).await.unwrap();
        assert_eq!(ev, vec![SenderEvent::Resent { seqno: 0 }]);
        assert_eq!(chain.sent().last().unwrap(), &first);
        // accepted: seqno 1, wallet active -> confirmed, next batch of 2 at seqno 1, no init
        chain.set_wallet(&s.address().clone(), w.initial_data_with_seqno(1));
        let ev = s.tick(1002).await.unwrap();
        assert!(
            matches!(&ev[0], SenderEvent::Confirmed { seqno: 0, messages } if messages.len() == 4)
        );
        assert_eq!(
            ev[1],
            SenderEvent::Sent {
                seqno: 1,
                messages: 2
            }
        );
        let msg: tycho_types::models::OwnedMessage =
            crate::codec::decode_boc(chain.sent().last().unwrap())
                .unwrap()
                .parse()
                .unwrap();
        assert!(msg.init.is_none());
        // the chain's clock passes valid_until: expired, messages requeued and sent again
        chain.set_utime(1002 + 3601);
        let ev = s.tick(1003).await.unwrap();
        assert_eq!(ev[0], SenderEvent::Expired { seqno: 1 });
        assert_eq!(
            ev[1],
            SenderEvent::Sent {
                seqno: 1,
                messages: 2
            }
        );
        assert_eq!(s.pending(), 2);
    }

    #[tokio::test]
    async fn sender_keeps_messages_when_send_fails() {
        let k = key();
        let w = Wallet::v4r2(k.public_key(), 0);
        let chain = FakeChain::default();
        chain.fail_sends(true);
        let mut s = WalletSender::new(chain.clone(), w, k).unwrap();
        s.enqueue(OutMsg::new(StdAddr::ZERO, 1, None));
        assert!(s.tick(1).await.is_err());
        assert_eq!(s.pending(), 1);
        chain.fail_sends(false);
        assert_eq!(
            s.tick(2).await.unwrap(),
            vec![SenderEvent::Sent {
                seqno: 0,
                messages: 1
            }]
        );
    }
}
