//! [`QuorumChain`]: one [`Chain`] over several independently configured endpoints, whose
//! reads count only when enough of them agree.
//!
//! Inside a TEE the host controls the network, and toncenter answers carry no proofs, so
//! one endpoint (or whoever sits on the path to it) could hand a proxy a forged root
//! configuration or an inflated client balance. Until reads are proof-checked, a read is
//! confirmed by a quorum: each endpoint is asked, and an answer is returned only when at
//! least `quorum` endpoints gave it byte for byte (compared by a SHA-256 over a canonical
//! encoding: code and data by cell hash, the last transaction, the whole get-method stack,
//! every field of every transaction). Otherwise the read fails with
//! [`ChainError::NoQuorum`], which lists what each endpoint said as a short hash, and the
//! caller keeps its last agreed value. Two different answers that both reach the quorum are
//! a conflict and fail too, so no minority or first answer is ever applied; with a quorum
//! above half of the endpoints only one answer can reach it.
//!
//! Endpoints at slightly different heights give different answers for a moment. Reads are
//! therefore asked again (`rounds`, with a growing pause) while the answers differ, and
//! transaction lists are compared transaction by transaction rather than as whole lists: a
//! transaction counts when `quorum` endpoints list it identically (or, at a logical time
//! that their lists span, `quorum` endpoints list nothing there), and the answer is the
//! agreed run from the cursor on, so a lagging endpoint only shortens it. The masterchain
//! seqno (a liveness probe) is the highest one that `quorum` endpoints have reached.
//!
//! Sends go to every endpoint and succeed when any accepted. One endpoint with quorum 1
//! passes every call straight through, exactly as a plain [`Toncenter`] does.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tycho_types::cell::Cell;
use tycho_types::models::StdAddr;

use crate::chain::{
    AccountState, AccountStatus, Chain, ChainError, EndpointAnswer, GetMethodResult, StackValue,
    Transaction, TxId, TxMessage,
};
use crate::{Toncenter, ToncenterConfig};

/// How reads are confirmed.
#[derive(Debug, Clone)]
pub struct QuorumConfig {
    /// Endpoints that must give the same answer (1..=number of endpoints).
    pub quorum: usize,
    /// Times a read is asked while the endpoints' answers differ (at least 1).
    pub rounds: u32,
    /// Pause before the second round; doubled for each further round.
    pub retry_delay: Duration,
    /// Once `quorum` endpoints answered (differently, or a transaction list), how long the
    /// others still get before the read is decided without them.
    pub straggler_wait: Duration,
}

impl QuorumConfig {
    /// `quorum` with 3 rounds, 500 ms first pause and 1 s for stragglers.
    pub fn new(quorum: usize) -> Self {
        QuorumConfig {
            quorum,
            rounds: 3,
            retry_delay: Duration::from_millis(500),
            straggler_wait: Duration::from_secs(1),
        }
    }
}

/// A configuration that cannot confirm anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuorumConfigError {
    /// No endpoint at all.
    #[error("no chain endpoint configured")]
    NoEndpoints,
    /// Quorum 0 would confirm anything.
    #[error("the quorum must be at least 1")]
    ZeroQuorum,
    /// More agreeing endpoints wanted than there are.
    #[error("a quorum of {quorum} needs at least {quorum} endpoints; {endpoints} configured")]
    QuorumAboveEndpoints {
        /// The quorum asked for.
        quorum: usize,
        /// Endpoints configured.
        endpoints: usize,
    },
    /// The same server twice would count one source as two.
    #[error("endpoint {0} is configured twice")]
    Duplicate(String),
}

/// Checks an endpoint list and quorum; endpoints are compared by [`endpoint_label`] (scheme,
/// host and port), case-insensitively.
pub fn check_quorum(urls: &[String], quorum: usize) -> Result<(), QuorumConfigError> {
    if urls.is_empty() {
        return Err(QuorumConfigError::NoEndpoints);
    }
    if quorum == 0 {
        return Err(QuorumConfigError::ZeroQuorum);
    }
    if quorum > urls.len() {
        return Err(QuorumConfigError::QuorumAboveEndpoints {
            quorum,
            endpoints: urls.len(),
        });
    }
    let mut seen: Vec<String> = Vec::new();
    for u in urls {
        let l = endpoint_label(u).to_ascii_lowercase();
        if seen.contains(&l) {
            return Err(QuorumConfigError::Duplicate(endpoint_label(u)));
        }
        seen.push(l);
    }
    Ok(())
}

/// How an endpoint is named in logs and errors, and what makes two endpoints the same: the
/// scheme, host and port of its URL. User info, path and query are left out because some
/// providers carry the API key there; two URLs on one server are one source anyway.
pub fn endpoint_label(url: &str) -> String {
    let url = url.trim();
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or(authority);
    match scheme {
        Some(s) => format!("{s}://{host}"),
        None => host.to_owned(),
    }
}

/// Counters of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EndpointStats {
    /// [`endpoint_label`] of its URL.
    pub endpoint: String,
    /// Reads it failed (transport, HTTP, malformed answers).
    pub errors: u64,
    /// Reads in which it was outvoted (a different answer than the agreed one).
    pub dissents: u64,
}

/// Counters of a [`QuorumChain`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QuorumStats {
    /// Endpoints that must agree.
    pub quorum: usize,
    /// Reads refused because endpoints gave different answers.
    pub disagreements: u64,
    /// Reads refused because too few endpoints answered.
    pub unavailable: u64,
    /// Per endpoint, in configuration order.
    pub endpoints: Vec<EndpointStats>,
}

struct Member<C> {
    label: String,
    chain: C,
    errors: AtomicU64,
    dissents: AtomicU64,
}

struct Inner<C> {
    members: Vec<Member<C>>,
    cfg: QuorumConfig,
    disagreements: AtomicU64,
    unavailable: AtomicU64,
}

/// A [`Chain`] over several endpoints whose reads need a quorum (see the module docs).
/// Cheap to clone; clones share their counters.
pub struct QuorumChain<C = Toncenter> {
    inner: Arc<Inner<C>>,
}

impl<C> Clone for QuorumChain<C> {
    fn clone(&self) -> Self {
        QuorumChain {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<C> std::fmt::Debug for QuorumChain<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let labels: Vec<&str> = self
            .inner
            .members
            .iter()
            .map(|m| m.label.as_str())
            .collect();
        f.debug_struct("QuorumChain")
            .field("endpoints", &labels)
            .field("quorum", &self.inner.cfg.quorum)
            .finish()
    }
}

impl QuorumChain<Toncenter> {
    /// One [`Toncenter`] per configuration (each with its own URL and API key), confirmed
    /// by `cfg`. Every configuration must name exactly one endpoint.
    pub fn toncenter(
        endpoints: Vec<ToncenterConfig>,
        cfg: QuorumConfig,
    ) -> Result<Self, ChainError> {
        let mut members = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            let [url] = e.endpoints.as_slice() else {
                return Err(ChainError::Decode(
                    "each quorum endpoint is one toncenter URL".into(),
                ));
            };
            let label = endpoint_label(url);
            members.push((label, Toncenter::new(e)?));
        }
        Self::new(members, cfg).map_err(|e| ChainError::Decode(e.to_string()))
    }
}

impl<C: Chain + Clone + 'static> QuorumChain<C> {
    /// `(label, backend)` pairs confirmed by `cfg`.
    pub fn new(endpoints: Vec<(String, C)>, cfg: QuorumConfig) -> Result<Self, QuorumConfigError> {
        let labels: Vec<String> = endpoints.iter().map(|(l, _)| l.clone()).collect();
        check_quorum(&labels, cfg.quorum)?;
        let members = endpoints
            .into_iter()
            .map(|(label, chain)| Member {
                label,
                chain,
                errors: AtomicU64::new(0),
                dissents: AtomicU64::new(0),
            })
            .collect();
        Ok(QuorumChain {
            inner: Arc::new(Inner {
                members,
                cfg: QuorumConfig {
                    rounds: cfg.rounds.max(1),
                    ..cfg
                },
                disagreements: AtomicU64::new(0),
                unavailable: AtomicU64::new(0),
            }),
        })
    }

    /// The counters so far.
    pub fn stats(&self) -> QuorumStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        QuorumStats {
            quorum: self.inner.cfg.quorum,
            disagreements: l(&self.inner.disagreements),
            unavailable: l(&self.inner.unavailable),
            endpoints: self
                .inner
                .members
                .iter()
                .map(|m| EndpointStats {
                    endpoint: m.label.clone(),
                    errors: l(&m.errors),
                    dissents: l(&m.dissents),
                })
                .collect(),
        }
    }

    /// The single backend when there is nothing to vote on (one endpoint, quorum 1).
    fn single(&self) -> Option<&C> {
        match self.inner.members.as_slice() {
            [only] => Some(&only.chain),
            _ => None,
        }
    }

    /// Counts and returns a failed read.
    fn fail(&self, what: &str, answers: Vec<EndpointAnswer>) -> ChainError {
        let e = ChainError::NoQuorum {
            what: what.to_owned(),
            quorum: self.inner.cfg.quorum,
            answers,
        };
        if e.is_disagreement() {
            self.inner.disagreements.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(read = what, error = %e, "ton endpoints disagree");
        } else {
            self.inner.unavailable.fetch_add(1, Ordering::Relaxed);
        }
        e
    }

    fn dissent(&self, idx: usize, what: &str) {
        let m = &self.inner.members[idx];
        m.dissents.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            endpoint = %m.label,
            read = what,
            "ton endpoint outvoted: its answer differs from the agreed one"
        );
    }

    fn errored(&self, idx: usize, e: &ChainError) -> EndpointAnswer {
        let m = &self.inner.members[idx];
        m.errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(endpoint = %m.label, error = %e, "ton endpoint failed");
        EndpointAnswer {
            endpoint: m.label.clone(),
            said: format!("error: {}", short(&e.to_string())),
        }
    }

    fn said(&self, idx: usize, fp: &Fp) -> EndpointAnswer {
        EndpointAnswer {
            endpoint: self.inner.members[idx].label.clone(),
            said: format!("answer {}", hex::encode(&fp[..8])),
        }
    }

    /// Asks every endpoint at once with `ask`; the answers come as they arrive, each with
    /// its endpoint's index.
    fn ask_all<'a, T, Fut>(
        &'a self,
        ask: impl Fn(&'a C) -> Fut,
    ) -> FuturesUnordered<impl Future<Output = (usize, T)>>
    where
        Fut: Future<Output = T>,
    {
        self.inner
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let f = ask(&m.chain);
                async move { (i, f.await) }
            })
            .collect()
    }

    /// Asks every endpoint with `ask` and returns the answer `quorum` of them gave
    /// identically (by `fingerprint`; answers without one are failures, not votes), merging
    /// the agreeing answers with `merge`. Rounds repeat while answers differ.
    async fn vote<'a, T, F, Fut>(
        &'a self,
        what: &str,
        ask: F,
        fingerprint: impl Fn(&Result<T, ChainError>) -> Option<Fp>,
        merge: impl Fn(Vec<Result<T, ChainError>>) -> Result<T, ChainError>,
    ) -> Result<T, ChainError>
    where
        F: Fn(&'a C) -> Fut,
        Fut: Future<Output = Result<T, ChainError>>,
    {
        let k = self.inner.cfg.quorum;
        let n = self.inner.members.len();
        let mut round = 0u32;
        loop {
            let mut pending = self.ask_all(&ask);
            // Groups of identical answers: fingerprint, who gave it, the answers.
            let mut groups: Vec<Group<T>> = Vec::new();
            let mut answers: Vec<Option<EndpointAnswer>> = vec![None; n];
            let mut outstanding = n;
            // Once `quorum` endpoints answered without a decision (they differ), the others
            // get `straggler_wait`, so one dead endpoint cannot hold a round for its whole
            // retry cycle.
            let mut deadline: Option<tokio::time::Instant> = None;
            let decision = loop {
                let Some((i, r)) = next_before(&mut pending, deadline).await else {
                    // Everyone answered, or the stragglers' time is up.
                    let counts: Vec<usize> = groups.iter().map(|g| g.1.len()).collect();
                    break decide(&counts, 0, k);
                };
                outstanding -= 1;
                match fingerprint(&r) {
                    Some(fp) => {
                        answers[i] = Some(self.said(i, &fp));
                        match groups.iter_mut().find(|g| g.0 == fp) {
                            Some(g) => {
                                g.1.push(i);
                                g.2.push(r);
                            }
                            None => groups.push((fp, vec![i], vec![r])),
                        }
                    }
                    None => {
                        let e = r.err().unwrap_or_else(|| {
                            ChainError::Decode("answer without a fingerprint".into())
                        });
                        answers[i] = Some(self.errored(i, &e));
                    }
                }
                let counts: Vec<usize> = groups.iter().map(|g| g.1.len()).collect();
                let decision = decide(&counts, outstanding, k);
                if decision != Decision::Pending {
                    break decision;
                }
                if deadline.is_none() && counts.iter().sum::<usize>() >= k {
                    deadline = Some(tokio::time::Instant::now() + self.inner.cfg.straggler_wait);
                }
            };
            drop(pending);
            if let Decision::Agreed(g) = decision {
                let (_, _, values) = groups.swap_remove(g);
                for (_, who, _) in &groups {
                    for &i in who {
                        self.dissent(i, what);
                    }
                }
                return merge(values);
            }
            round += 1;
            if groups.len() >= 2 && round < self.inner.cfg.rounds {
                tokio::time::sleep(self.delay(round)).await;
                continue;
            }
            let answers = self.complete(answers);
            return Err(self.fail(what, answers));
        }
    }

    /// Pause before round `round + 1` (`round` >= 1).
    fn delay(&self, round: u32) -> Duration {
        self.inner
            .cfg
            .retry_delay
            .saturating_mul(1 << (round - 1).min(10))
            .min(Duration::from_secs(10))
    }

    fn complete(&self, answers: Vec<Option<EndpointAnswer>>) -> Vec<EndpointAnswer> {
        answers
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                a.unwrap_or_else(|| EndpointAnswer {
                    endpoint: self.inner.members[i].label.clone(),
                    said: "no answer".into(),
                })
            })
            .collect()
    }

    /// [`Chain::transactions_since`] by quorum: every endpoint's list is gathered (the last
    /// ones get `straggler_wait` once `quorum` answered) and [`agree_transactions`] keeps
    /// the agreed run.
    async fn vote_transactions(
        &self,
        address: &StdAddr,
        after: Option<&TxId>,
        limit: usize,
    ) -> Result<Vec<Transaction>, ChainError> {
        let k = self.inner.cfg.quorum;
        let n = self.inner.members.len();
        let what = format!("transactions of {address}");
        let mut round = 0u32;
        loop {
            let mut pending = self.ask_all(|c| c.transactions_since(address, after, limit));
            let mut lists: Vec<(usize, Vec<Transaction>)> = Vec::new();
            let mut answers: Vec<Option<EndpointAnswer>> = vec![None; n];
            let mut deadline: Option<tokio::time::Instant> = None;
            loop {
                let Some((i, r)) = next_before(&mut pending, deadline).await else {
                    break;
                };
                match r {
                    Ok(list) => {
                        answers[i] = Some(self.said(i, &fp_list(&list)));
                        lists.push((i, list));
                        if lists.len() >= k && deadline.is_none() {
                            deadline =
                                Some(tokio::time::Instant::now() + self.inner.cfg.straggler_wait);
                        }
                    }
                    Err(e) => answers[i] = Some(self.errored(i, &e)),
                }
            }
            drop(pending);
            let views: Vec<(usize, &[Transaction])> =
                lists.iter().map(|(i, l)| (*i, l.as_slice())).collect();
            let outcome = agree_transactions(&views, after, limit, k);
            match outcome {
                TxAgreement::Agreed { txs, dissenters } => {
                    for i in dissenters {
                        self.dissent(i, &what);
                    }
                    return Ok(txs);
                }
                TxAgreement::NoQuorum { disagreement } => {
                    round += 1;
                    if disagreement && round < self.inner.cfg.rounds {
                        tokio::time::sleep(self.delay(round)).await;
                        continue;
                    }
                    let answers = self.complete(answers);
                    return Err(self.fail(&what, answers));
                }
            }
        }
    }
}

/// The next answer in `pending`; `None` once all answered or `deadline` (if any) passed.
async fn next_before<S: futures::Stream + Unpin>(
    pending: &mut S,
    deadline: Option<tokio::time::Instant>,
) -> Option<S::Item> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, pending.next())
            .await
            .unwrap_or(None),
        None => pending.next().await,
    }
}

/// SHA-256 of an answer's canonical encoding.
type Fp = [u8; 32];

/// Endpoints that gave one answer: its fingerprint, who, and their answers.
type Group<T> = (Fp, Vec<usize>, Vec<Result<T, ChainError>>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// Group `.0` reached the quorum and no other answer still can.
    Agreed(usize),
    /// Answers still outstanding could change the outcome.
    Pending,
    /// No answer can reach the quorum, or two did.
    Failed,
}

/// The outcome so far, given how many endpoints gave each distinct answer, how many have
/// not answered yet, and the quorum `k`. A brand-new answer could still come from the
/// outstanding endpoints, so it counts as a rival too.
fn decide(counts: &[usize], outstanding: usize, k: usize) -> Decision {
    let reached: Vec<usize> = (0..counts.len()).filter(|&g| counts[g] >= k).collect();
    match reached.as_slice() {
        [] => {
            let best = counts.iter().copied().max().unwrap_or(0);
            if best + outstanding >= k {
                Decision::Pending
            } else {
                Decision::Failed
            }
        }
        [g] => {
            let rival = outstanding >= k
                || counts
                    .iter()
                    .enumerate()
                    .any(|(h, &c)| h != *g && c + outstanding >= k);
            if rival {
                Decision::Pending
            } else {
                Decision::Agreed(*g)
            }
        }
        _ => Decision::Failed,
    }
}

/// The agreed part of several endpoints' transaction lists.
#[derive(Debug)]
enum TxAgreement {
    /// The agreed transactions (oldest first) and the endpoints that were outvoted.
    Agreed {
        txs: Vec<Transaction>,
        dissenters: Vec<usize>,
    },
    /// Nothing can be returned; `disagreement` when endpoints contradicted each other.
    NoQuorum { disagreement: bool },
}

/// Agrees on `transactions_since(after, limit)` answers (`(endpoint, list)`, each oldest
/// first) with quorum `k`.
///
/// An endpoint's list covers the logical times from the cursor (or, without one, from its
/// first transaction, or from the account's start when the list is shorter than `limit`) to
/// its last transaction, and says at each of them either "this transaction" or "none". At
/// each logical time any endpoint lists, the statement `k` endpoints make is kept (a
/// transaction is included, a "none" skipped); two statements that both reach `k` are a
/// conflict. The answer is the run of decided times from the start: at the first time
/// without a decision it ends (without a cursor, undecided times before the first decided
/// one are skipped: windows of endpoints at different heights start at different places).
/// Lists that are not strictly ordered or reach back to the cursor are refused.
fn agree_transactions(
    lists: &[(usize, &[Transaction])],
    after: Option<&TxId>,
    limit: usize,
    k: usize,
) -> TxAgreement {
    let mut dissenters: Vec<usize> = Vec::new();
    // (endpoint, list, first covered lt, last covered lt)
    let mut voters: Vec<(usize, &[Transaction], u64, u64)> = Vec::new();
    for &(i, l) in lists {
        let ordered = l.windows(2).all(|w| w[0].id.lt < w[1].id.lt);
        let past_cursor = after.is_none_or(|a| l.first().is_none_or(|t| t.id.lt > a.lt));
        if !ordered || !past_cursor || l.len() > limit {
            dissenters.push(i);
            continue;
        }
        let (lo, hi) = match (l.first(), l.last()) {
            (Some(f), Some(h)) => {
                let lo = match after {
                    Some(a) => a.lt.saturating_add(1),
                    None if l.len() < limit => 0,
                    None => f.id.lt,
                };
                (lo, h.id.lt)
            }
            // An empty list says nothing about any particular time.
            _ => (1, 0),
        };
        voters.push((i, l, lo, hi));
    }
    if voters.len() < k {
        return TxAgreement::NoQuorum {
            disagreement: false,
        };
    }
    let mut lts: Vec<u64> = voters
        .iter()
        .flat_map(|v| v.1.iter().map(|t| t.id.lt))
        .collect();
    lts.sort_unstable();
    lts.dedup();
    let mut out: Vec<Transaction> = Vec::new();
    for lt in lts {
        // Statements at `lt`: Some(fingerprint) for a transaction, None for "none here".
        let mut said: Vec<(Option<Fp>, Vec<usize>, Option<&Transaction>)> = Vec::new();
        for &(i, l, lo, hi) in &voters {
            let st = match l.binary_search_by_key(&lt, |t| t.id.lt) {
                Ok(p) => Some((fp_tx(&l[p]), &l[p])),
                Err(_) if lo <= lt && lt <= hi => None,
                Err(_) => continue,
            };
            let key = st.as_ref().map(|s| s.0);
            match said.iter_mut().find(|s| s.0 == key) {
                Some(s) => s.1.push(i),
                None => said.push((key, vec![i], st.map(|s| s.1))),
            }
        }
        let reached: Vec<usize> = (0..said.len()).filter(|&s| said[s].1.len() >= k).collect();
        match reached.as_slice() {
            [s] => {
                for (o, other) in said.iter().enumerate() {
                    if o != *s {
                        dissenters.extend(other.1.iter().copied());
                    }
                }
                if let Some(tx) = said[*s].2 {
                    out.push(tx.clone());
                }
            }
            [] if after.is_none() && out.is_empty() => {}
            [] => {
                // Undecided: a lag ends the run here; so does a disagreement once something
                // was agreed (the caller moves on and meets it again at the front).
                if said.len() >= 2 && out.is_empty() {
                    return TxAgreement::NoQuorum { disagreement: true };
                }
                break;
            }
            _ => return TxAgreement::NoQuorum { disagreement: true },
        }
    }
    dissenters.sort_unstable();
    dissenters.dedup();
    if after.is_none() {
        let older = out.len().saturating_sub(limit);
        out.drain(..older);
    } else {
        out.truncate(limit);
    }
    TxAgreement::Agreed {
        txs: out,
        dissenters,
    }
}

/// The seqno at least `k` endpoints have reached (the k-th highest), if `k` answered.
fn kth_highest(mut seqnos: Vec<u32>, k: usize) -> Option<u32> {
    seqnos.sort_unstable_by(|a, b| b.cmp(a));
    seqnos.get(k.checked_sub(1)?).copied()
}

/// Canonical encodings hashed for comparison. Each field is tagged and length-delimited by
/// construction (fixed widths, explicit counts), so different answers never share bytes.
struct Canon(ring::digest::Context);

impl Canon {
    fn new(kind: &[u8]) -> Self {
        let mut c = Canon(ring::digest::Context::new(&ring::digest::SHA256));
        c.0.update(&(kind.len() as u32).to_be_bytes());
        c.0.update(kind);
        c
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.update(&[v]);
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.update(&v.to_be_bytes());
        self
    }
    fn u128(&mut self, v: u128) -> &mut Self {
        self.0.update(&v.to_be_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u64(v.len() as u64);
        self.0.update(v);
        self
    }
    fn cell(&mut self, c: Option<&Cell>) -> &mut Self {
        match c {
            Some(c) => self.u8(1).bytes(c.repr_hash().as_slice()),
            None => self.u8(0),
        }
    }
    fn addr(&mut self, a: Option<&StdAddr>) -> &mut Self {
        match a {
            Some(a) => self.u8(1).bytes(a.to_string().as_bytes()),
            None => self.u8(0),
        }
    }
    fn tx_id(&mut self, t: Option<&TxId>) -> &mut Self {
        match t {
            Some(t) => self.u8(1).u64(t.lt).bytes(&t.hash),
            None => self.u8(0),
        }
    }
    fn stack(&mut self, s: &StackValue) -> &mut Self {
        match s {
            StackValue::Int(i) => self.u8(1).u8(i.negative as u8).bytes(&i.magnitude),
            StackValue::Cell(c) => self.u8(2).cell(Some(c)),
            StackValue::Slice(c) => self.u8(3).cell(Some(c)),
            StackValue::Null => self.u8(4),
            StackValue::Tuple(t) => {
                self.u8(5).u64(t.len() as u64);
                for v in t {
                    self.stack(v);
                }
                self
            }
        }
    }
    fn msg(&mut self, m: &TxMessage) -> &mut Self {
        self.addr(m.source.as_ref())
            .addr(m.destination.as_ref())
            .u128(m.value)
            .cell(m.body.as_ref())
    }
    fn finish(self) -> Fp {
        let d = self.0.finish();
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }
}

/// An account state without `sync_utime` (the time of each node's view differs).
fn fp_account(st: &AccountState) -> Fp {
    let status = match st.status {
        AccountStatus::Nonexist => 0,
        AccountStatus::Uninit => 1,
        AccountStatus::Active => 2,
        AccountStatus::Frozen => 3,
    };
    let mut c = Canon::new(b"account");
    c.u8(status)
        .u128(st.balance)
        .cell(st.code.as_ref())
        .cell(st.data.as_ref())
        .tx_id(st.last_tx.as_ref());
    c.finish()
}

/// A get-method result's exit code and stack (gas is not part of the answer).
fn fp_get_method(r: &Result<GetMethodResult, ChainError>) -> Option<Fp> {
    let mut c = Canon::new(b"get-method");
    match r {
        Ok(g) => {
            c.u8(0)
                .u64(g.exit_code as u32 as u64)
                .u64(g.stack.len() as u64);
            for v in &g.stack {
                c.stack(v);
            }
        }
        // A failing exit code is the chain's answer too (e.g. `seqno` on a wallet not
        // deployed yet), so endpoints vote on it.
        Err(ChainError::GetMethodExit { method, exit_code }) => {
            c.u8(1)
                .bytes(method.as_bytes())
                .u64(*exit_code as u32 as u64);
        }
        Err(_) => return None,
    }
    Some(c.finish())
}

fn fp_tx(t: &Transaction) -> Fp {
    let mut c = Canon::new(b"tx");
    c.tx_id(Some(&t.id)).u64(t.utime).u128(t.fee);
    match &t.in_msg {
        Some(m) => c.u8(1).msg(m),
        None => c.u8(0),
    };
    c.u64(t.out_msgs.len() as u64);
    for m in &t.out_msgs {
        c.msg(m);
    }
    c.cell(t.raw.as_ref());
    c.finish()
}

fn fp_list(l: &[Transaction]) -> Fp {
    let mut c = Canon::new(b"tx-list");
    c.u64(l.len() as u64);
    for t in l {
        c.bytes(&fp_tx(t));
    }
    c.finish()
}

/// The first 120 characters of an error (they can quote a server's body).
fn short(s: &str) -> String {
    s.chars().take(120).collect()
}

impl<C: Chain + Clone + 'static> Chain for QuorumChain<C> {
    async fn send_boc(&self, boc: &[u8]) -> Result<(), ChainError> {
        if let Some(c) = self.single() {
            return c.send_boc(boc).await;
        }
        // Every endpoint gets the message; the first acceptance answers and the other
        // sends go on in the background (each is bounded by its client's timeouts).
        let boc: Arc<[u8]> = Arc::from(boc);
        let mut sends: FuturesUnordered<_> = self
            .inner
            .members
            .iter()
            .map(|m| {
                let chain = m.chain.clone();
                let boc = Arc::clone(&boc);
                tokio::spawn(async move { chain.send_boc(&boc).await })
            })
            .collect();
        let mut last = None;
        while let Some(r) = sends.next().await {
            match r {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last = Some(e),
                Err(e) => last = Some(ChainError::Transport(format!("send task: {e}"))),
            }
        }
        Err(ChainError::Exhausted {
            attempts: self.inner.members.len() as u32,
            last: Box::new(last.unwrap_or(ChainError::Transport("no endpoint".into()))),
        })
    }

    async fn run_get_method(
        &self,
        address: &StdAddr,
        method: &str,
        stack: &[StackValue],
    ) -> Result<GetMethodResult, ChainError> {
        if let Some(c) = self.single() {
            return c.run_get_method(address, method, stack).await;
        }
        self.vote(
            &format!("get-method {method} on {address}"),
            |c: &C| c.run_get_method(address, method, stack),
            fp_get_method,
            |mut v| v.swap_remove(0),
        )
        .await
    }

    async fn account_state(&self, address: &StdAddr) -> Result<AccountState, ChainError> {
        if let Some(c) = self.single() {
            return c.account_state(address).await;
        }
        self.vote(
            &format!("account {address}"),
            |c: &C| c.account_state(address),
            |r| r.as_ref().ok().map(fp_account),
            |v| {
                // Identical states; the oldest of the nodes' clocks is reported.
                let utime = v
                    .iter()
                    .filter_map(|r| r.as_ref().ok().and_then(|s| s.sync_utime))
                    .min();
                let mut st = v.into_iter().next().ok_or_else(|| {
                    ChainError::Decode("an agreed answer without members".into())
                })??;
                st.sync_utime = utime;
                Ok(st)
            },
        )
        .await
    }

    async fn transactions_since(
        &self,
        address: &StdAddr,
        after: Option<&TxId>,
        limit: usize,
    ) -> Result<Vec<Transaction>, ChainError> {
        if let Some(c) = self.single() {
            return c.transactions_since(address, after, limit).await;
        }
        self.vote_transactions(address, after, limit).await
    }

    async fn masterchain_seqno(&self) -> Result<u32, ChainError> {
        if let Some(c) = self.single() {
            return c.masterchain_seqno().await;
        }
        let n = self.inner.members.len();
        let mut answers: Vec<Option<EndpointAnswer>> = vec![None; n];
        let mut seqnos = Vec::new();
        let mut all: FuturesUnordered<_> = self
            .inner
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let f = m.chain.masterchain_seqno();
                async move { (i, f.await) }
            })
            .collect();
        while let Some((i, r)) = all.next().await {
            match r {
                Ok(s) => {
                    answers[i] = Some(EndpointAnswer {
                        endpoint: self.inner.members[i].label.clone(),
                        said: format!("seqno {s}"),
                    });
                    seqnos.push(s);
                }
                Err(e) => answers[i] = Some(self.errored(i, &e)),
            }
        }
        match kth_highest(seqnos, self.inner.cfg.quorum) {
            Some(s) => Ok(s),
            None => Err(self.fail("masterchain seqno", self.complete(answers))),
        }
    }

    fn quorum_disagreements(&self) -> u64 {
        self.inner.disagreements.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::TvmInt;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;
    use tycho_types::cell::{CellBuilder, HashBytes};

    fn cell(v: u32) -> Cell {
        let mut b = CellBuilder::new();
        b.store_u32(v).unwrap();
        b.build().unwrap()
    }

    fn addr(n: u8) -> StdAddr {
        StdAddr::new(0, HashBytes([n; 32]))
    }

    fn state(data: u32, lt: u64) -> AccountState {
        AccountState {
            balance: 1_000,
            status: AccountStatus::Active,
            code: Some(cell(7)),
            data: Some(cell(data)),
            last_tx: Some(TxId {
                lt,
                hash: [lt as u8; 32],
            }),
            sync_utime: Some(1_000 + lt),
        }
    }

    fn tx(lt: u64, body: u32) -> Transaction {
        Transaction {
            id: TxId {
                lt,
                hash: [lt as u8; 32],
            },
            utime: lt,
            fee: 1,
            in_msg: Some(TxMessage {
                source: Some(addr(1)),
                destination: Some(addr(2)),
                value: 5,
                body: Some(cell(body)),
            }),
            out_msgs: vec![],
            raw: None,
        }
    }

    /// A node whose answers the test sets; `Err` strings become transport errors.
    #[derive(Clone, Default)]
    struct FakeNode(Arc<Mutex<Node>>);

    #[derive(Default)]
    struct Node {
        states: Vec<Result<AccountState, String>>,
        txs: Vec<Transaction>,
        seqno: Option<u32>,
        /// A get-method answer; `Err(code)` is that exit code.
        get: Option<Result<GetMethodResult, i32>>,
        sent: Vec<Vec<u8>>,
        refuse_sends: bool,
        /// Delay before answering (a slow or dead node).
        delay: Duration,
        calls: usize,
    }

    impl FakeNode {
        fn with_state(st: AccountState) -> Self {
            let n = FakeNode::default();
            n.0.lock().unwrap().states = vec![Ok(st)];
            n
        }
        /// Answers `states` in turn (the last one forever).
        fn answering(states: Vec<Result<AccountState, String>>) -> Self {
            let n = FakeNode::default();
            n.0.lock().unwrap().states = states;
            n
        }
        fn with_txs(txs: Vec<Transaction>) -> Self {
            let n = FakeNode::default();
            n.0.lock().unwrap().txs = txs;
            n
        }
        fn calls(&self) -> usize {
            self.0.lock().unwrap().calls
        }
        /// Answers only after `by`.
        fn delayed(self, by: Duration) -> Self {
            self.0.lock().unwrap().delay = by;
            self
        }
    }

    /// The account state 2 of `nodes` agree on, which must be decided within 5 s (`why`);
    /// the tests that call it run on paused (virtual) time, so the bound does not depend
    /// on the machine's load.
    async fn read_within_5s(nodes: &[FakeNode], why: &str) -> AccountState {
        let q = quorum(nodes, 2);
        tokio::time::timeout(Duration::from_secs(5), q.account_state(&addr(9)))
            .await
            .expect(why)
            .unwrap()
    }

    impl Chain for FakeNode {
        async fn send_boc(&self, boc: &[u8]) -> Result<(), ChainError> {
            let mut g = self.0.lock().unwrap();
            if g.refuse_sends {
                return Err(ChainError::Http {
                    status: 500,
                    message: "refused".into(),
                });
            }
            g.sent.push(boc.to_vec());
            Ok(())
        }
        async fn run_get_method(
            &self,
            _: &StdAddr,
            _: &str,
            _: &[StackValue],
        ) -> Result<GetMethodResult, ChainError> {
            match self.0.lock().unwrap().get.clone() {
                Some(Ok(g)) => Ok(g),
                Some(Err(exit_code)) => Err(ChainError::GetMethodExit {
                    method: "seqno".into(),
                    exit_code,
                }),
                None => Err(ChainError::Transport("no answer set".into())),
            }
        }
        async fn account_state(&self, _: &StdAddr) -> Result<AccountState, ChainError> {
            let (r, delay) = {
                let mut g = self.0.lock().unwrap();
                let i = g.calls.min(g.states.len().saturating_sub(1));
                g.calls += 1;
                (g.states.get(i).cloned(), g.delay)
            };
            tokio::time::sleep(delay).await;
            match r {
                Some(Ok(s)) => Ok(s),
                Some(Err(e)) => Err(ChainError::Transport(e)),
                None => Err(ChainError::Transport("no state set".into())),
            }
        }
        async fn transactions_since(
            &self,
            _: &StdAddr,
            after: Option<&TxId>,
            limit: usize,
        ) -> Result<Vec<Transaction>, ChainError> {
            let g = self.0.lock().unwrap();
            let mut v: Vec<Transaction> = g
                .txs
                .iter()
                .filter(|t| after.is_none_or(|a| t.id.lt > a.lt))
                .cloned()
                .collect();
            if after.is_none() {
                let d = v.len().saturating_sub(limit);
                v.drain(..d);
            }
            v.truncate(limit);
            Ok(v)
        }
        async fn masterchain_seqno(&self) -> Result<u32, ChainError> {
            self.0
                .lock()
                .unwrap()
                .seqno
                .ok_or_else(|| ChainError::Transport("down".into()))
        }
    }

    fn quorum(nodes: &[FakeNode], k: usize) -> QuorumChain<FakeNode> {
        let mut cfg = QuorumConfig::new(k);
        cfg.retry_delay = Duration::from_millis(1);
        cfg.straggler_wait = Duration::from_millis(50);
        QuorumChain::new(
            nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("http://node{i}"), n.clone()))
                .collect(),
            cfg,
        )
        .unwrap()
    }

    #[test]
    fn decisions() {
        use Decision::*;
        // 2 of 3: two identical answers decide at once, whatever the third says.
        assert_eq!(decide(&[2], 1, 2), Agreed(0));
        assert_eq!(decide(&[1, 2], 0, 2), Agreed(1));
        assert_eq!(decide(&[1], 2, 2), Pending);
        assert_eq!(decide(&[1, 1], 1, 2), Pending);
        assert_eq!(decide(&[1, 1, 1], 0, 2), Failed);
        assert_eq!(decide(&[1], 0, 2), Failed, "one answer, two failures");
        // 2 of 4: a second group could still reach 2, so the first must wait; 2 + 2 fails.
        assert_eq!(decide(&[2, 1], 1, 2), Pending);
        assert_eq!(decide(&[2, 2], 0, 2), Failed);
        assert_eq!(decide(&[2, 1], 0, 2), Agreed(0));
        // 1 of 3 still waits for every answer and refuses a conflict.
        assert_eq!(decide(&[1], 2, 1), Pending);
        assert_eq!(decide(&[3], 0, 1), Agreed(0));
        assert_eq!(decide(&[2, 1], 0, 1), Failed);
        assert_eq!(decide(&[], 0, 1), Failed);
    }

    #[test]
    fn configuration_checks_and_labels() {
        let u = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            check_quorum(&u(&[]), 1),
            Err(QuorumConfigError::NoEndpoints)
        );
        assert_eq!(
            check_quorum(&u(&["http://a"]), 0),
            Err(QuorumConfigError::ZeroQuorum)
        );
        assert_eq!(
            check_quorum(&u(&["http://a", "http://b"]), 3),
            Err(QuorumConfigError::QuorumAboveEndpoints {
                quorum: 3,
                endpoints: 2
            })
        );
        // The same server twice (spelled differently) does not count as two.
        assert_eq!(
            check_quorum(&u(&["https://A.example/", "https://a.example?x=1"]), 2),
            Err(QuorumConfigError::Duplicate("https://a.example".into()))
        );
        check_quorum(&u(&["https://a.example", "https://b.example"]), 2).unwrap();
        assert_eq!(
            endpoint_label("https://user:secret@host.example:8443/base/?api_key=k#f"),
            "https://host.example:8443"
        );
        assert_eq!(
            endpoint_label("https://go.provider.example/SECRET-KEY/"),
            "https://go.provider.example"
        );
        // Two paths on one server are one source.
        assert_eq!(
            check_quorum(
                &u(&["https://p.example/key-1/", "https://p.example/key-2/"]),
                2
            ),
            Err(QuorumConfigError::Duplicate("https://p.example".into()))
        );
        assert_eq!(endpoint_label("127.0.0.1:8081"), "127.0.0.1:8081");
    }

    #[tokio::test]
    async fn a_single_liar_is_outvoted_and_counted() {
        let honest = state(1, 10);
        let lie = state(666, 10);
        let nodes = [
            FakeNode::with_state(honest.clone()),
            FakeNode::with_state(lie.clone()),
            FakeNode::with_state(honest.clone()),
        ];
        let q = quorum(&nodes, 2);
        let got = q.account_state(&addr(9)).await.unwrap();
        assert_eq!(got.data, honest.data);
        assert_eq!(q.quorum_disagreements(), 0);
        // With a single endpoint (the old behaviour) the liar is believed.
        let alone = quorum(&nodes[1..2], 1);
        assert_eq!(alone.account_state(&addr(9)).await.unwrap().data, lie.data);
    }

    #[tokio::test]
    async fn disagreement_is_no_quorum_listing_hashes_not_payloads() {
        // All three differ: nothing is returned, after every round.
        let nodes = [
            FakeNode::with_state(state(1, 10)),
            FakeNode::with_state(state(2, 10)),
            FakeNode::with_state(state(3, 10)),
        ];
        let q = quorum(&nodes, 2);
        let e = q.account_state(&addr(9)).await.unwrap_err();
        assert!(e.is_disagreement(), "{e}");
        let ChainError::NoQuorum {
            quorum: needed,
            answers,
            ..
        } = &e
        else {
            panic!("{e}")
        };
        assert_eq!(*needed, 2);
        assert_eq!(answers.len(), 3);
        assert!(answers.iter().all(|a| a.said.starts_with("answer ")), "{e}");
        assert!(answers[0].endpoint == "http://node0", "{e}");
        assert_eq!(nodes[0].calls(), 3, "asked again in each of the 3 rounds");
        assert_eq!(q.quorum_disagreements(), 1);
        // Two liars agreeing against one honest node with quorum 3: refused as well.
        let nodes = [
            FakeNode::with_state(state(666, 10)),
            FakeNode::with_state(state(666, 10)),
            FakeNode::with_state(state(1, 10)),
        ];
        let e = quorum(&nodes, 3).account_state(&addr(9)).await.unwrap_err();
        assert!(e.is_disagreement(), "{e}");
        // The same two liars with quorum 2 are believed: a host that controls a quorum of
        // the endpoints can still lie (docs/threat-model.md).
        let got = quorum(&nodes, 2).account_state(&addr(9)).await.unwrap();
        assert_eq!(got.data, Some(cell(666)));
    }

    #[tokio::test]
    async fn nodes_at_different_heights_agree_after_a_round() {
        // Node 2 lags one transaction behind, then catches up.
        let nodes = [
            FakeNode::with_state(state(2, 11)),
            FakeNode::answering(vec![Ok(state(1, 10)), Ok(state(2, 11))]),
        ];
        let q = quorum(&nodes, 2);
        let got = q.account_state(&addr(9)).await.unwrap();
        assert_eq!(got.data, Some(cell(2)));
        // The oldest of the nodes' clocks is reported.
        assert_eq!(got.sync_utime, Some(1_011));
        assert_eq!(q.quorum_disagreements(), 0);
    }

    #[tokio::test]
    async fn too_few_answers_is_no_quorum_without_disagreement() {
        let nodes = [
            FakeNode::with_state(state(1, 10)),
            FakeNode::answering(vec![Err("down".into())]),
            FakeNode::answering(vec![Err("down".into())]),
        ];
        let q = quorum(&nodes, 2);
        let e = q.account_state(&addr(9)).await.unwrap_err();
        assert!(matches!(e, ChainError::NoQuorum { .. }), "{e}");
        assert!(!e.is_disagreement());
        assert_eq!(nodes[0].calls(), 1, "an outage is not retried in rounds");
        let s = q.stats();
        assert_eq!((s.disagreements, s.unavailable), (0, 1));
        assert_eq!(s.endpoints[1].errors, 1);
        // Quorum 2 of 3 with one node down still reads.
        let nodes = [
            FakeNode::with_state(state(1, 10)),
            FakeNode::answering(vec![Err("down".into())]),
            FakeNode::with_state(state(1, 10)),
        ];
        quorum(&nodes, 2).account_state(&addr(9)).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_node_does_not_delay_a_decided_read() {
        let nodes = [
            FakeNode::with_state(state(1, 10)),
            FakeNode::with_state(state(1, 10)),
            FakeNode::with_state(state(5, 10)).delayed(Duration::from_secs(30)),
        ];
        let got = read_within_5s(&nodes, "decided by the first two").await;
        assert_eq!(got.data, Some(cell(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_node_does_not_stall_a_round_in_which_the_others_differ() {
        let nodes = [
            FakeNode::answering(vec![Ok(state(1, 10)), Ok(state(2, 11))]),
            FakeNode::with_state(state(2, 11)),
            FakeNode::with_state(state(1, 10)).delayed(Duration::from_secs(60)),
        ];
        let got = read_within_5s(&nodes, "the second round decides without the dead node").await;
        assert_eq!(got.data, Some(cell(2)));
    }

    #[tokio::test]
    async fn get_methods_vote_on_stacks_and_exit_codes() {
        let ok = |v: i128| {
            Ok(GetMethodResult {
                exit_code: 0,
                gas_used: Some(v as u64), // gas differs between nodes; it is not compared
                stack: vec![StackValue::Int(TvmInt::from_i128(v))],
            })
        };
        let nodes = [
            FakeNode::default(),
            FakeNode::default(),
            FakeNode::default(),
        ];
        nodes[0].0.lock().unwrap().get = Some(ok(5));
        nodes[1].0.lock().unwrap().get = Some(ok(5).map(|mut g| {
            g.gas_used = None;
            g
        }));
        nodes[2].0.lock().unwrap().get = Some(ok(500));
        let q = quorum(&nodes, 2);
        let got = q.run_get_method(&addr(1), "seqno", &[]).await.unwrap();
        assert_eq!(got.stack[0].as_i128(), Some(5));
        // An exit code that every node reports is the agreed answer.
        for n in &nodes {
            n.0.lock().unwrap().get = Some(Err(-13));
        }
        let e = q.run_get_method(&addr(1), "seqno", &[]).await.unwrap_err();
        assert!(
            matches!(e, ChainError::GetMethodExit { exit_code: -13, .. }),
            "{e}"
        );
    }

    #[tokio::test]
    async fn transactions_agree_per_transaction() {
        let real = vec![tx(10, 1), tx(20, 2), tx(30, 3)];
        // A liar changes the body of the second transaction and invents a fourth; a lagging
        // node lacks the last real one.
        let mut forged = real.clone();
        forged[1] = tx(20, 666);
        forged.push(tx(40, 4));
        let nodes = [
            FakeNode::with_txs(real.clone()),
            FakeNode::with_txs(forged),
            FakeNode::with_txs(real[..2].to_vec()),
        ];
        let q = quorum(&nodes, 2);
        let cursor = TxId {
            lt: 5,
            hash: [0; 32],
        };
        let got = q
            .transactions_since(&addr(1), Some(&cursor), 10)
            .await
            .unwrap();
        assert_eq!(
            got, real,
            "the forged body and the invented fourth are outvoted"
        );
        assert_eq!(q.stats().endpoints[1].dissents, 1);
        // The liar hides the third while the third node lags: the agreed run ends before it
        // (nothing unconfirmed is returned), and the next read from there is refused.
        nodes[1].0.lock().unwrap().txs = real[..2].to_vec();
        nodes[1].0.lock().unwrap().txs.push(tx(40, 4));
        let got = q
            .transactions_since(&addr(1), Some(&cursor), 10)
            .await
            .unwrap();
        assert_eq!(got, real[..2].to_vec());
        let e = q
            .transactions_since(&addr(1), Some(&real[1].id), 10)
            .await
            .unwrap_err();
        assert!(e.is_disagreement(), "{e}");
        // Once the lagging node catches up the third one is agreed.
        nodes[2].0.lock().unwrap().txs = real.clone();
        let got = q
            .transactions_since(&addr(1), Some(&cursor), 10)
            .await
            .unwrap();
        assert_eq!(got, real);
        // Inserting a transaction the others do not list is outvoted ("none here").
        let mut inserted = real.clone();
        inserted.insert(1, tx(15, 9));
        nodes[1].0.lock().unwrap().txs = inserted;
        let got = q
            .transactions_since(&addr(1), Some(&cursor), 10)
            .await
            .unwrap();
        assert_eq!(got, real);
        // Hiding one is outvoted as well.
        nodes[1].0.lock().unwrap().txs = vec![tx(10, 1), tx(30, 3)];
        assert_eq!(
            q.transactions_since(&addr(1), Some(&cursor), 10)
                .await
                .unwrap(),
            real
        );
        // Three different second transactions: nothing past the first is agreed, and from
        // there on the read is refused as a disagreement, not taken for a lag.
        nodes[0].0.lock().unwrap().txs = vec![tx(10, 1), tx(20, 7)];
        nodes[1].0.lock().unwrap().txs = vec![tx(10, 1), tx(20, 8)];
        nodes[2].0.lock().unwrap().txs = vec![tx(10, 1), tx(20, 9)];
        let got = q
            .transactions_since(&addr(1), Some(&cursor), 10)
            .await
            .unwrap();
        assert_eq!(got, real[..1].to_vec());
        let e = q
            .transactions_since(&addr(1), Some(&real[0].id), 10)
            .await
            .unwrap_err();
        assert!(e.is_disagreement(), "{e}");
    }

    #[test]
    fn transaction_windows_at_different_heights() {
        let all: Vec<Transaction> = (1..=6).map(|i| tx(i * 10, i as u32)).collect();
        // Without a cursor each node answers its newest 3: the windows are shifted.
        let a = &all[3..6];
        let b = &all[2..5];
        let c = &all[3..6];
        let r = agree_transactions(&[(0, a), (1, b), (2, c)], None, 3, 2);
        let TxAgreement::Agreed { txs, dissenters } = r else {
            panic!("{r:?}")
        };
        assert_eq!(txs, all[3..6].to_vec());
        assert!(dissenters.is_empty());
        // Unordered or pre-cursor lists are refused, and too few voters is no quorum.
        let back = [all[1].clone(), all[0].clone()];
        let r = agree_transactions(&[(0, &back[..]), (1, &all[..2])], None, 10, 2);
        assert!(matches!(
            r,
            TxAgreement::NoQuorum {
                disagreement: false
            }
        ));
        let cursor = all[2].id.clone();
        let r = agree_transactions(
            &[(0, &all[..]), (1, &all[3..]), (2, &all[3..])],
            Some(&cursor),
            10,
            2,
        );
        let TxAgreement::Agreed { txs, dissenters } = r else {
            panic!("{r:?}")
        };
        assert_eq!(txs, all[3..].to_vec());
        assert_eq!(dissenters, vec![0]);
        // With a cursor, `limit` keeps the oldest; without one, the newest.
        let r = agree_transactions(&[(0, &all[..]), (1, &all[..])], None, 6, 2);
        let TxAgreement::Agreed { txs, .. } = r else {
            panic!()
        };
        assert_eq!(txs.len(), 6);
        let r = agree_transactions(&[(0, &all[..2]), (1, &all[..2])], Some(&tx(1, 0).id), 2, 2);
        let TxAgreement::Agreed { txs, .. } = r else {
            panic!()
        };
        assert_eq!(txs, all[..2].to_vec());
    }

    #[test]
    fn masterchain_seqno_is_the_kth_highest() {
        assert_eq!(kth_highest(vec![10, 12, 11], 2), Some(11));
        assert_eq!(kth_highest(vec![u32::MAX, 12, 11], 2), Some(12), "a liar's");
        assert_eq!(kth_highest(vec![10], 2), None);
        assert_eq!(kth_highest(vec![10], 0), None);
    }

    #[tokio::test]
    async fn seqno_and_sends() {
        let nodes = [
            FakeNode::default(),
            FakeNode::default(),
            FakeNode::default(),
        ];
        nodes[0].0.lock().unwrap().seqno = Some(100);
        nodes[1].0.lock().unwrap().seqno = Some(u32::MAX);
        let q = quorum(&nodes, 2);
        assert_eq!(q.masterchain_seqno().await.unwrap(), 100);
        nodes[1].0.lock().unwrap().seqno = None;
        assert!(q.masterchain_seqno().await.is_err());
        // A send reaches every node and succeeds when one accepted.
        nodes[0].0.lock().unwrap().refuse_sends = true;
        q.send_boc(b"boc").await.unwrap();
        let delivered = Arc::new(AtomicUsize::new(0));
        for _ in 0..100 {
            delivered.store(
                nodes
                    .iter()
                    .filter(|n| !n.0.lock().unwrap().sent.is_empty())
                    .count(),
                Ordering::Relaxed,
            );
            if delivered.load(Ordering::Relaxed) == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(delivered.load(Ordering::Relaxed), 2);
        for n in &nodes {
            n.0.lock().unwrap().refuse_sends = true;
        }
        assert!(matches!(
            q.send_boc(b"boc").await,
            Err(ChainError::Exhausted { attempts: 3, .. })
        ));
    }

    #[tokio::test]
    async fn one_endpoint_passes_errors_through_unchanged() {
        let n = FakeNode::answering(vec![Err("down".into())]);
        let q = quorum(std::slice::from_ref(&n), 1);
        assert!(matches!(
            q.account_state(&addr(1)).await,
            Err(ChainError::Transport(m)) if m == "down"
        ));
    }
}
