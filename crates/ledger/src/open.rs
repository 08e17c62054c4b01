//! Opening a ledger from stored rows, with integrity and anti-rollback checks.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cocoon_openai::usage::PriceTable;
use cocoon_ton::keys::SigningKey;

use crate::account::Account;
use crate::codec::{META_KEY, RowCodec};
use crate::error::OpenError;
use crate::ledger::Ledger;
use crate::state::{Meta, State};
use crate::types::{AccountKey, ChainCheckpoint, LedgerEvent};
use crate::update::Update;

/// What [`Ledger::open`] needs besides the stored rows.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Root `params_version` now. A fresh database starts with it; a stored older version is
    /// moved to it (closing the older accounts); a newer stored version is refused.
    pub params_version: u32,
    /// Prices of that version.
    pub prices: PriceTable,
    /// The last `save_state` checkpoint on chain of each of our proxy contracts, by params
    /// version (no entry: none on chain). The database's own version is compared with what it
    /// prepared; a checkpoint on the contract of a newer version than the database's means
    /// the database never saw that contract. Both mean it was rolled back.
    pub chain: BTreeMap<u32, ChainCheckpoint>,
    /// 32 random bytes for this process, mixed into checkpoint hashes. Randomness is the
    /// caller's, to keep this crate pure.
    pub session: [u8; 32],
}

impl Ledger {
    fn empty(codec: RowCodec, meta: Meta, session: [u8; 32]) -> Ledger {
        Ledger {
            state: State::new(meta),
            codec,
            session,
            reservations: HashMap::new(),
            pending: Vec::new(),
            touched: BTreeSet::new(),
            in_flight: None,
            committed_seq: 0,
            confirm_seq: 0,
            events: Vec::new(),
            halted: None,
        }
    }

    /// Opens the ledger from the rows a store returned (`(row key, sealed value)`).
    ///
    /// - The metadata row must pass its integrity check, or nothing is trusted
    ///   ([`OpenError::MetaCorrupt`]).
    /// - An account row that fails its check or does not parse becomes a frozen placeholder:
    ///   it takes no requests and issues no receipts, its row is never overwritten (the
    ///   evidence stays), and a [`LedgerEvent::CorruptRow`] tells the operator. Other
    ///   accounts work normally.
    /// - Rollback detection: the chain's last checkpoint must be the database's confirmed one
    ///   or one it prepared; anything else means the database is older than the chain
    ///   ([`OpenError::RolledBack`]). A prepared checkpoint that the chain shows is confirmed
    ///   now (as a pending update: commit before issuing receipts).
    pub fn open(
        rows: Vec<(String, Vec<u8>)>,
        proxy_key: &SigningKey,
        options: OpenOptions,
    ) -> Result<Ledger, OpenError> {
        let codec = RowCodec::new(proxy_key);
        let meta_row = rows.iter().find(|(k, _)| k == META_KEY);
        let Some((_, meta_value)) = meta_row else {
            if rows.iter().any(|(k, _)| k != META_KEY) {
                return Err(OpenError::MetaCorrupt("metadata row missing".into()));
            }
            if let Some(chain) = options.chain.values().next() {
                return Err(OpenError::RolledBack {
                    chain: *chain,
                    db_confirmed: None,
                    db_pending: Vec::new(),
                });
            }
            let meta = Meta::new(options.params_version, options.prices);
            return Ok(Ledger::empty(codec, meta, options.session));
        };
        let meta = codec
            .decode_meta(meta_value)
            .map_err(OpenError::MetaCorrupt)?;
        if options.params_version < meta.params_version {
            return Err(OpenError::ParamsOlder {
                requested: options.params_version,
                stored: meta.params_version,
            });
        }
        let stored = meta.params_version;
        check_chain(&meta, options.chain.get(&stored).copied())?;
        if let Some((_, chain)) = options.chain.range(stored.saturating_add(1)..).next() {
            return Err(OpenError::RolledBack {
                chain: *chain,
                db_confirmed: None,
                db_pending: Vec::new(),
            });
        }
        let mut ledger = Ledger::empty(codec, meta, options.session);
        ledger.committed_seq = ledger.state.meta.last_seq;
        for (k, v) in rows.iter().filter(|(k, _)| k != META_KEY) {
            ledger.load_row(k, v);
        }
        if let Some(c) = options.chain.get(&stored).copied()
            && ledger.state.meta.confirmed != Some(c)
        {
            // check_chain accepted it, so it is one of ours: confirm it.
            let _ = ledger.confirm_checkpoint(c);
        }
        if options.params_version > ledger.state.meta.params_version {
            let _ = ledger.change_params(options.params_version, options.prices);
        }
        Ok(ledger)
    }

    fn load_row(&mut self, row_key: &str, value: &[u8]) {
        match self.codec.decode_account(row_key, value) {
            Ok(a) => {
                if let Some(reason) = &a.frozen {
                    self.events.push(LedgerEvent::Frozen {
                        key: a.key.clone(),
                        reason: reason.clone(),
                    });
                }
                self.state.accounts.insert(a.key.clone(), a);
            }
            Err(reason) => {
                self.events.push(LedgerEvent::CorruptRow {
                    row_key: row_key.to_string(),
                    reason: reason.clone(),
                });
                if let Some(key) = AccountKey::parse_row_key(row_key) {
                    let mut a = Account::new(key.clone());
                    a.corrupt = true;
                    a.frozen = Some(format!("stored row is corrupt: {reason}"));
                    self.state.accounts.insert(key, a);
                }
            }
        }
    }

    /// Rebuilds a ledger by applying `updates` to an empty state: the state is exactly the
    /// fold of its numbered updates (used by audits, tests and the fuzz target).
    pub fn replay(
        proxy_key: &SigningKey,
        params_version: u32,
        prices: PriceTable,
        updates: &[Update],
    ) -> Ledger {
        let meta = Meta::new(params_version, prices);
        let mut l = Ledger::empty(RowCodec::new(proxy_key), meta, [0; 32]);
        for u in updates {
            let applied = l.state.apply(u);
            l.events.extend(applied.events);
        }
        l.committed_seq = l.state.meta.last_seq;
        for a in l.state.accounts.values_mut() {
            a.db_tokens = a.tokens;
        }
        l
    }
}

fn check_chain(meta: &Meta, chain: Option<ChainCheckpoint>) -> Result<(), OpenError> {
    let rolled_back = |chain| OpenError::RolledBack {
        chain,
        db_confirmed: meta.confirmed,
        db_pending: meta.pending.keys().copied().collect(),
    };
    match (chain, meta.confirmed) {
        (None, None) => Ok(()),
        (None, Some(db_confirmed)) => Err(OpenError::ChainBehind {
            chain: None,
            db_confirmed,
        }),
        (Some(c), confirmed) if confirmed == Some(c) => Ok(()),
        (Some(c), _) if meta.pending.get(&c.seqno) == Some(&c.hash) => Ok(()),
        (Some(c), Some(db_confirmed)) if c.seqno < db_confirmed.seqno => {
            Err(OpenError::ChainBehind {
                chain: Some(c),
                db_confirmed,
            })
        }
        (Some(c), _) => Err(rolled_back(c)),
    }
}
