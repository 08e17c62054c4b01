//! What the explorer learns from transactions, as pure functions of them: the root's params
//! changes (each accepted `change_price`, `change_params` or `change_multipliers` message,
//! replayed from the deployment's params when the deployment is among the transactions
//! read) and the TON a contract paid out over time. Both keep a bounded amount whatever
//! the chain sends.

use cocoon_ton::chain::{Transaction, TxId};
use cocoon_ton::codec::Layout;
use cocoon_ton::messages::{ChangeMultipliers, ChangeParams, ChangePrice};
use cocoon_ton::opcodes as op;
use cocoon_ton::root::{CocoonParams, RootConfig};
use cocoon_ton::{Cell, StdAddr};
use serde::Serialize;

/// Params changes kept (the oldest are dropped first).
pub const MAX_CHANGES: usize = 256;
/// Payout events kept per contract.
pub const MAX_PAYOUTS: usize = 512;

/// The root params the explorer follows, in the order it shows them.
pub const FIELDS: [&str; 10] = [
    "price_per_token",
    "worker_fee_per_token",
    "prompt_multiplier",
    "cached_multiplier",
    "completion_multiplier",
    "reasoning_multiplier",
    "proxy_delay_before_close",
    "client_delay_before_close",
    "min_proxy_stake",
    "min_client_stake",
];

/// The followed params of `p`, in [`FIELDS`] order.
pub fn values(p: &CocoonParams) -> [u64; 10] {
    [
        p.price_per_token,
        p.worker_fee_per_token,
        p.prompt_tokens_price_multiplier.into(),
        p.cached_tokens_price_multiplier.into(),
        p.completion_tokens_price_multiplier.into(),
        p.reasoning_tokens_price_multiplier.into(),
        p.proxy_delay_before_close.into(),
        p.client_delay_before_close.into(),
        p.min_proxy_stake,
        p.min_client_stake,
    ]
}

/// One field of a change: its value before (`None`: from before the transactions read)
/// and after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    /// One of [`FIELDS`].
    pub field: &'static str,
    /// The value before.
    pub old: Option<u64>,
    /// The value after.
    pub new: u64,
}

/// An accepted params change of the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParamsChange {
    /// Unix time of the root's transaction.
    pub at: u64,
    /// Its logical time.
    pub lt: u64,
    /// `change-price`, `change-params` or `change-multipliers`.
    pub op: &'static str,
    /// The fields whose value moved (or whose old value is unknown).
    pub fields: Vec<FieldChange>,
}

/// The root's params history as read so far.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RootHistory {
    /// Changes, oldest first (at most [`MAX_CHANGES`]).
    pub changes: Vec<ParamsChange>,
    /// The params as replayed ([`FIELDS`] order; `None`: not known from the transactions).
    #[serde(skip)]
    state: [Option<u64>; 10],
    /// When the root was deployed, when its deployment was among the transactions read.
    pub deployed_at: Option<u64>,
    /// Transactions read.
    pub transactions: u64,
    /// The newest transaction read: where the next read starts.
    #[serde(skip)]
    pub cursor: Option<TxId>,
    /// Reads whose page of newest transactions did not reach back to the cursor (more
    /// changes than a page between two reads): changes may be missing there.
    pub gaps: u64,
}

/// The params in a deployment's state init, when `tx` deployed the root.
fn deployed_params(tx: &Transaction) -> Option<CocoonParams> {
    let raw = tx.raw.as_ref()?;
    let t: tycho_types::models::Transaction = raw.parse().ok()?;
    let msg = t.load_in_msg().ok()??;
    let data = msg.init?.data?;
    RootConfig::from_storage_cell(&data).ok().map(|c| c.params)
}

/// Whether `tx` was accepted: not aborted when its outcome is known, else sent by `owner`.
fn accepted(tx: &Transaction, owner: &StdAddr) -> bool {
    match tx.outcome() {
        Ok(Some(o)) => !o.aborted,
        Ok(None) => tx
            .in_msg
            .as_ref()
            .is_some_and(|m| m.source.as_ref() == Some(owner)),
        Err(_) => false,
    }
}

/// The change a message body asks for: its name and `(field index, new value)` pairs.
fn decode(body: &Cell) -> Option<(&'static str, Vec<(usize, u64)>)> {
    let opcode = body.as_slice().ok()?.load_u32().ok()?;
    match opcode {
        op::ROOT_CHANGE_PRICE => {
            let m = ChangePrice::from_cell(body).ok()?;
            Some((
                "change-price",
                vec![(0, m.price_per_token.0), (1, m.worker_fee_per_token.0)],
            ))
        }
        op::ROOT_CHANGE_PARAMS => {
            let m = ChangeParams::from_cell(body).ok()?;
            Some((
                "change-params",
                vec![
                    (0, m.price_per_token.0),
                    (1, m.worker_fee_per_token.0),
                    (6, m.proxy_delay_before_close.into()),
                    (7, m.client_delay_before_close.into()),
                    (8, m.min_proxy_stake.0),
                    (9, m.min_client_stake.0),
                ],
            ))
        }
        op::ROOT_CHANGE_MULTIPLIERS => {
            let m = ChangeMultipliers::from_cell(body).ok()?;
            Some((
                "change-multipliers",
                vec![
                    (2, m.prompt.into()),
                    (3, m.cached.into()),
                    (4, m.completion.into()),
                    (5, m.reasoning.into()),
                ],
            ))
        }
        _ => None,
    }
}

impl RootHistory {
    /// Nothing read yet.
    pub fn new() -> RootHistory {
        RootHistory::default()
    }

    /// Replays `txs` (the root's, oldest first, newer than [`RootHistory::cursor`]) whose
    /// owner operations are accepted only from `owner` when the outcome is unknown.
    pub fn apply(&mut self, txs: &[Transaction], owner: &StdAddr) {
        for tx in txs {
            if self.cursor.as_ref().is_some_and(|c| tx.id.lt <= c.lt) {
                continue;
            }
            self.cursor = Some(tx.id.clone());
            self.transactions += 1;
            if let Some(p) = deployed_params(tx) {
                self.deployed_at = Some(tx.utime);
                self.state = values(&p).map(Some);
                continue;
            }
            let Some(body) = tx.in_msg.as_ref().and_then(|m| m.body.as_ref()) else {
                continue;
            };
            let Some((name, sets)) = decode(body) else {
                continue;
            };
            if !accepted(tx, owner) {
                continue;
            }
            let mut fields = Vec::new();
            for (i, new) in sets {
                let old = self.state[i];
                if old != Some(new) {
                    fields.push(FieldChange {
                        field: FIELDS[i],
                        old,
                        new,
                    });
                }
                self.state[i] = Some(new);
            }
            if fields.is_empty() {
                continue;
            }
            if self.changes.len() >= MAX_CHANGES {
                self.changes.remove(0);
            }
            self.changes.push(ParamsChange {
                at: tx.utime,
                lt: tx.id.lt,
                op: name,
                fields,
            });
        }
    }
}

/// To whom a proxy contract sent value, told by the message that made it send: a `payout`
/// on a worker contract's request pays a worker, one on a client contract's request
/// refunds a client; everything else (commission to the owner, closing, excesses) is other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PaidTo {
    /// A worker's payout (inbound `worker_proxy_request`, outbound `payout`).
    Workers,
    /// A client's refund (inbound `client_proxy_request`, outbound `payout`).
    Clients,
    /// Anything else.
    Other,
}

/// The opcode a message body starts with.
fn opcode(body: Option<&Cell>) -> Option<u32> {
    body?.as_slice().ok()?.load_u32().ok()
}

/// What a contract paid out (the value of its outgoing messages), over time.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Payouts {
    /// `(unix time, nanoTON, to whom)` per transaction and kind that sent value, oldest
    /// first (at most [`MAX_PAYOUTS`]).
    pub events: Vec<(u64, u128, PaidTo)>,
    /// Everything paid out in the transactions read.
    pub total: u128,
    /// Of which payouts to workers.
    pub to_workers: u128,
    /// Of which refunds to clients.
    pub to_clients: u128,
    /// Transactions read.
    pub transactions: u64,
    /// The newest transaction read.
    #[serde(skip)]
    pub cursor: Option<TxId>,
    /// Reads that did not reach back to the cursor: payouts may be missing there.
    pub gaps: u64,
}

impl Payouts {
    /// Adds `txs` (oldest first, newer than the cursor).
    pub fn apply(&mut self, txs: &[Transaction]) {
        for tx in txs {
            if self.cursor.as_ref().is_some_and(|c| tx.id.lt <= c.lt) {
                continue;
            }
            self.cursor = Some(tx.id.clone());
            self.transactions += 1;
            if matches!(tx.outcome(), Ok(Some(o)) if o.aborted) {
                continue;
            }
            let asked_by = match opcode(tx.in_msg.as_ref().and_then(|m| m.body.as_ref())) {
                Some(op::WORKER_PROXY_REQUEST) => PaidTo::Workers,
                Some(op::CLIENT_PROXY_REQUEST) => PaidTo::Clients,
                _ => PaidTo::Other,
            };
            let mut by_kind = [0u128; 3];
            for m in &tx.out_msgs {
                let to = if opcode(m.body.as_ref()) == Some(op::PAYOUT) {
                    asked_by
                } else {
                    PaidTo::Other
                };
                let i = to as usize;
                by_kind[i] = by_kind[i].saturating_add(m.value);
            }
            for (to, paid) in [PaidTo::Workers, PaidTo::Clients, PaidTo::Other]
                .into_iter()
                .zip(by_kind)
            {
                if paid == 0 {
                    continue;
                }
                self.total = self.total.saturating_add(paid);
                match to {
                    PaidTo::Workers => self.to_workers = self.to_workers.saturating_add(paid),
                    PaidTo::Clients => self.to_clients = self.to_clients.saturating_add(paid),
                    PaidTo::Other => {}
                }
                if self.events.len() >= MAX_PAYOUTS {
                    self.events.remove(0);
                }
                self.events.push((tx.utime, paid, to));
            }
        }
    }

    /// The running total after each event, for a chart.
    pub fn cumulative(&self) -> Vec<(u64, f64)> {
        let before = self
            .total
            .saturating_sub(self.events.iter().map(|e| e.1).sum::<u128>());
        let mut sum = before;
        self.events
            .iter()
            .map(|(t, v, _)| {
                sum = sum.saturating_add(*v);
                (*t, sum as f64)
            })
            .collect()
    }

    /// The events sent to `to`, `(unix time, nanoTON)`, oldest first.
    pub fn of(&self, to: PaidTo) -> impl Iterator<Item = (u64, u128)> + '_ {
        self.events
            .iter()
            .filter(move |e| e.2 == to)
            .map(|e| (e.0, e.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_ton::HashBytes;
    use cocoon_ton::chain::TxMessage;
    use cocoon_ton::codec::Coins;

    fn owner() -> StdAddr {
        StdAddr::new(0, HashBytes([7; 32]))
    }

    fn tx(lt: u64, from: StdAddr, body: Option<Cell>, out: &[u128]) -> Transaction {
        Transaction {
            id: TxId {
                lt,
                hash: [lt as u8; 32],
            },
            utime: 1_700_000_000 + lt,
            fee: 0,
            in_msg: Some(TxMessage {
                source: Some(from),
                destination: None,
                value: 1,
                body,
            }),
            out_msgs: out
                .iter()
                .map(|v| TxMessage {
                    source: None,
                    destination: None,
                    value: *v,
                    body: None,
                })
                .collect(),
            raw: None,
        }
    }

    fn price(p: u64, fee: u64) -> Option<Cell> {
        Some(
            ChangePrice {
                query_id: 1,
                price_per_token: Coins(p),
                worker_fee_per_token: Coins(fee),
            }
            .to_cell()
            .unwrap(),
        )
    }

    #[test]
    fn owner_changes_are_replayed_with_their_old_values() {
        let mut h = RootHistory::new();
        let mults = ChangeMultipliers {
            query_id: 2,
            prompt: 10_000,
            cached: 1_000,
            completion: 20_000,
            reasoning: 20_000,
        }
        .to_cell()
        .unwrap();
        let junk = {
            let mut b = cocoon_ton::CellBuilder::new();
            b.store_u32(op::ROOT_CHANGE_PRICE).unwrap();
            b.build().unwrap()
        };
        let stranger = StdAddr::new(0, HashBytes([9; 32]));
        h.apply(
            &[
                tx(10, owner(), price(20, 15), &[]),
                tx(11, stranger.clone(), price(1, 1), &[]),
                tx(12, owner(), Some(junk), &[]),
                tx(13, owner(), Some(mults), &[]),
                tx(14, owner(), price(30, 15), &[]),
                tx(15, owner(), None, &[]),
            ],
            &owner(),
        );
        // Read again from an older cursor: nothing counted twice.
        h.apply(&[tx(14, owner(), price(30, 15), &[])], &owner());
        assert_eq!(h.transactions, 6);
        assert_eq!(h.deployed_at, None);
        let c = &h.changes;
        assert_eq!(c.len(), 3, "{c:?}");
        assert_eq!(c[0].op, "change-price");
        assert_eq!(
            c[0].fields,
            vec![
                FieldChange {
                    field: "price_per_token",
                    old: None,
                    new: 20
                },
                FieldChange {
                    field: "worker_fee_per_token",
                    old: None,
                    new: 15
                },
            ]
        );
        assert_eq!(c[1].op, "change-multipliers");
        assert_eq!(c[1].fields.len(), 4);
        // Only the price moved; the fee stayed at 15.
        assert_eq!(
            c[2].fields,
            vec![FieldChange {
                field: "price_per_token",
                old: Some(20),
                new: 30
            }]
        );
        assert_eq!(c[2].at, 1_700_000_014);
    }

    #[test]
    fn the_history_and_the_payouts_stay_bounded() {
        let mut h = RootHistory::new();
        let txs: Vec<_> = (1..=(MAX_CHANGES as u64 + 10))
            .map(|i| tx(i, owner(), price(i, 0), &[]))
            .collect();
        h.apply(&txs, &owner());
        assert_eq!(h.changes.len(), MAX_CHANGES);
        assert_eq!(
            h.changes.last().unwrap().fields[0].new,
            MAX_CHANGES as u64 + 10
        );

        let mut p = Payouts::default();
        let txs: Vec<_> = (1..=(MAX_PAYOUTS as u64 + 2))
            .map(|i| tx(i, owner(), None, &[2, 3]))
            .collect();
        p.apply(&txs);
        p.apply(&[tx(3, owner(), None, &[100])]);
        assert_eq!(p.events.len(), MAX_PAYOUTS);
        assert_eq!(p.total, 5 * (MAX_PAYOUTS as u128 + 2));
        let cum = p.cumulative();
        assert_eq!(cum.first().unwrap().1, 15.0);
        assert_eq!(cum.last().unwrap().1, p.total as f64);
    }

    #[test]
    fn payouts_to_workers_and_refunds_to_clients_are_told_apart() {
        let body = |opcode: u32| {
            let mut b = cocoon_ton::CellBuilder::new();
            b.store_u32(opcode).unwrap();
            b.store_u64(1).unwrap();
            Some(b.build().unwrap())
        };
        let out = |value: u128, opcode: u32| TxMessage {
            source: None,
            destination: None,
            value,
            body: body(opcode),
        };
        let with = |lt: u64, inbound: u32, outs: Vec<TxMessage>| {
            let mut t = tx(lt, owner(), body(inbound), &[]);
            t.out_msgs = outs;
            t
        };
        let mut p = Payouts::default();
        p.apply(&[
            // A worker's payout, with the excess back to its contract.
            with(
                1,
                op::WORKER_PROXY_REQUEST,
                vec![out(700, op::PAYOUT), out(5, op::EXCESSES)],
            ),
            // A client's refund.
            with(2, op::CLIENT_PROXY_REQUEST, vec![out(300, op::PAYOUT)]),
            // The owner's commission.
            with(3, op::EXT_PROXY_PAYOUT_REQUEST, vec![out(40, op::PAYOUT)]),
        ]);
        assert_eq!((p.to_workers, p.to_clients, p.total), (700, 300, 1045));
        assert_eq!(
            p.of(PaidTo::Workers).collect::<Vec<_>>(),
            [(1_700_000_001, 700)]
        );
        assert_eq!(
            p.of(PaidTo::Clients).collect::<Vec<_>>(),
            [(1_700_000_002, 300)]
        );
        assert_eq!(p.of(PaidTo::Other).map(|e| e.1).sum::<u128>(), 45);
    }
}
