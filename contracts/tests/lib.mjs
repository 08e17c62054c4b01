// Shared test helpers: layouts (mirroring LAYOUTS.md), signing, deployment in @ton/sandbox.
import { Blockchain, internal } from '@ton/sandbox';
import { flattenTransaction } from '@ton/test-utils';
import { Address, beginCell, Cell, contractAddress, Dictionary, toNano } from '@ton/core';
import { keyPairFromSeed, sign } from '@ton/crypto';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const ROOT_DIR = path.resolve(HERE, '..');
export const REPO_DIR = path.resolve(ROOT_DIR, '..');

// ---------------------------------------------------------------- opcodes
export const OP = {
    excesses: 0x2565934c, payout: 0xc59a7cd3, do_not_process: 0x9a1247c0, proxy_save_state: 0x53109c0f,
    root_add_worker_type: 0xe34b1c60, root_del_worker_type: 0x8d94a79a,
    root_add_model_type: 0xc146134d, root_del_model_type: 0x92b11c18,
    root_add_proxy_type: 0x71860e80, root_del_proxy_type: 0x3c41d0b2,
    root_register_proxy: 0x927c7cb5, root_unregister_proxy: 0x6d49eaf2, root_update_proxy: 0x9c7924ba,
    root_change_price: 0xc52ed8d4, root_change_params: 0x022fa189, root_change_multipliers: 0x8b3e41d7,
    root_upgrade_contracts: 0xa2370f61, root_upgrade: 0x11aefd51, root_change_owner: 0xc4a1ae54,
    root_reset: 0x563c1d96,
    worker_proxy_request: 0x4d725d2c, worker_proxy_payout_request: 0x08e7d036,
    client_proxy_request: 0x65448ff4, client_proxy_top_up: 0x5cfc6b87, client_proxy_register: 0xa35cb580,
    client_proxy_refund_granted: 0xc68ebc7b, client_proxy_refund_force: 0xf4c354c9,
    ext_proxy_increase_stake: 0x9713f187, ext_proxy_payout_request: 0x7610e6eb, owner_proxy_close: 0xb51d5a01,
    ext_proxy_close_request_signed: 0x636a4391, ext_proxy_close_complete_request_signed: 0xe511abc7,
    ext_worker_payout_request_signed: 0xa040ad28, ext_worker_last_payout_request_signed: 0xf5f26a36,
    owner_worker_register: 0x26ed7f65,
    ext_client_top_up: 0xf172e6c2, ext_client_charge_signed: 0xbb63ff93, ext_client_grant_refund_signed: 0xefd711e1,
    owner_client_top_up_reopen: 0x29111ceb, owner_client_register: 0xc45f9f3b,
    owner_client_change_secret_hash: 0xa9357034, owner_client_change_secret_hash_and_top_up: 0x8473b408,
    owner_client_request_refund: 0xfafa6cc1, owner_client_increase_stake: 0x6a1f6a60, owner_client_withdraw: 0xda068e78,
};

export const ERR = {
    NOT_OWNER: 1001, BAD_SIGNATURE: 1002, SIGNED_MISMATCH: 1003, WRONG_CONTRACT: 1004, OLD_TOKENS: 1005,
    WRONG_STATE: 1006, NOT_UNLOCKED: 1007, LOW_MSG_VALUE: 1008, INSUFFICIENT_FUNDS: 1009, BAD_SENDER: 1010,
    STAKE_TOO_LOW: 1011, NOTHING_TO_WITHDRAW: 1012, BAD_PROXY_ADDR: 1013, UNKNOWN_PROXY: 1014, BAD_PRICE: 1015,
    NO_CHILD_CODE: 1016, UNKNOWN_OP: 0xffff, CELL_UNDERFLOW: 9,
};

export const STATE = { normal: 0, closing: 1, closed: 2 };

// ---------------------------------------------------------------- code
export function loadCode(name) {
    const j = JSON.parse(fs.readFileSync(path.join(ROOT_DIR, 'build', `${name}.json`), 'utf-8'));
    const cell = Cell.fromBoc(Buffer.from(j.codeBoc64, 'base64'))[0];
    assert.equal(cell.hash().toString('hex'), j.codeHashHex, `build/${name}.json hash`);
    return cell;
}
export const CODE = {
    root: loadCode('root'), proxy: loadCode('proxy'), client: loadCode('client'), worker: loadCode('worker'),
};

// ---------------------------------------------------------------- fixed inputs
export const FIXED_NOW = 1_750_000_000;
export function seed(name) {
    return createHash('sha256').update(`cocoon-testvector-seed:${name}`).digest();
}
export function keyPair(name) {
    return keyPairFromSeed(seed(name));
}

export const DEFAULT_PARAMS = {
    structVersion: 3, paramsVersion: 1, uniqueId: 42, isTest: true,
    pricePerToken: 20n, workerFeePerToken: 15n,
    promptMult: 10000, cachedMult: 1000, completionMult: 80000, reasoningMult: 80000,
    proxyDelayBeforeClose: 3600, clientDelayBeforeClose: 86400,
    minProxyStake: toNano('10'), minClientStake: toNano('1'),
};

// ---------------------------------------------------------------- layouts
export function paramsCell(p, mask) {
    const b = beginCell()
        .storeUint(p.structVersion, 8).storeUint(p.paramsVersion, 32).storeUint(p.uniqueId, 32).storeBit(p.isTest)
        .storeCoins(p.pricePerToken).storeCoins(p.workerFeePerToken)
        .storeUint(p.promptMult, 32).storeUint(p.cachedMult, 32).storeUint(p.completionMult, 32).storeUint(p.reasoningMult, 32)
        .storeUint(p.proxyDelayBeforeClose, 32).storeUint(p.clientDelayBeforeClose, 32)
        .storeCoins(p.minProxyStake).storeCoins(p.minClientStake);
    b.storeMaybeRef(mask & 1 ? CODE.proxy : null);
    b.storeMaybeRef(mask & 2 ? CODE.worker : null);
    b.storeMaybeRef(mask & 4 ? CODE.client : null);
    return b.endCell();
}

export function parseParams(c) {
    const s = c.beginParse();
    const p = {
        structVersion: s.loadUint(8), paramsVersion: s.loadUint(32), uniqueId: s.loadUint(32), isTest: s.loadBit(),
        pricePerToken: s.loadCoins(), workerFeePerToken: s.loadCoins(),
        promptMult: s.loadUint(32), cachedMult: s.loadUint(32), completionMult: s.loadUint(32), reasoningMult: s.loadUint(32),
        proxyDelayBeforeClose: s.loadUint(32), clientDelayBeforeClose: s.loadUint(32),
        minProxyStake: s.loadCoins(), minClientStake: s.loadCoins(),
        proxyCode: s.loadMaybeRef(), workerCode: s.loadMaybeRef(), clientCode: s.loadMaybeRef(),
    };
    s.endParse();
    return p;
}

const EMPTY_VALUE = { serialize: () => {}, parse: () => null };
export function hashDict(hashes) {
    const d = Dictionary.empty(Dictionary.Keys.BigUint(256), EMPTY_VALUE);
    for (const h of hashes) d.set(BigInt('0x' + h), null);
    return d;
}
export function proxyEntry(text) {
    const bytes = Buffer.from(text, 'ascii');
    return beginCell().storeUint(0, 1).storeUint(bytes.length, 7).storeBuffer(bytes);
}
const ENTRY_VALUE = {
    serialize: (src, b) => { b.storeBuilder(proxyEntry(src)); },
    parse: (s) => { s.loadUint(1); const n = s.loadUint(7); return s.loadBuffer(n).toString('ascii'); },
};
export function rootDataCell({ proxyHashes = [], proxies = [], lastProxySeqno = 0, workerHashes = [], modelHashes = [] } = {}) {
    const reg = Dictionary.empty(Dictionary.Keys.Uint(32), ENTRY_VALUE);
    for (const [seqno, text] of proxies) reg.set(seqno, text);
    return beginCell()
        .storeDict(proxyHashes.length ? hashDict(proxyHashes) : null)
        .storeDict(proxies.length ? reg : null)
        .storeUint(lastProxySeqno, 32)
        .storeDict(workerHashes.length ? hashDict(workerHashes) : null)
        .storeDict(modelHashes.length ? hashDict(modelHashes) : null)
        .endCell();
}
export function parseRootData(c) {
    const s = c.beginParse();
    const keys = (d) => d.keys().map((k) => k.toString(16).padStart(64, '0')).sort();
    const proxyHashes = keys(s.loadDict(Dictionary.Keys.BigUint(256), EMPTY_VALUE));
    const reg = s.loadDict(Dictionary.Keys.Uint(32), ENTRY_VALUE);
    const proxies = reg.keys().sort((a, b) => a - b).map((k) => [k, reg.get(k)]);
    const lastProxySeqno = s.loadUint(32);
    const workerHashes = keys(s.loadDict(Dictionary.Keys.BigUint(256), EMPTY_VALUE));
    const modelHashes = keys(s.loadDict(Dictionary.Keys.BigUint(256), EMPTY_VALUE));
    s.endParse();
    return { proxyHashes, proxies, lastProxySeqno, workerHashes, modelHashes };
}
export function rootStorageCell(owner, version, dataCell, params) {
    return beginCell().storeAddress(owner).storeUint(version, 32).storeRef(dataCell).storeRef(paramsCell(params, 7)).endCell();
}
export function parseRoot(c) {
    const s = c.beginParse();
    const owner = s.loadAddress();
    const version = s.loadUint(32);
    const data = parseRootData(s.loadRef());
    const params = parseParams(s.loadRef());
    s.endParse();
    return { owner, version, data, params };
}

export function proxyDataCell(owner, publicKey, root, params) {
    return beginCell()
        .storeAddress(owner).storeBuffer(publicKey).storeAddress(root)
        .storeUint(0, 2).storeCoins(0).storeCoins(0).storeUint(0, 32)
        .storeRef(paramsCell(params, 6)).endCell();
}
export function parseProxy(c) {
    const s = c.beginParse();
    const r = {
        owner: s.loadAddress(), publicKey: s.loadBuffer(32), root: s.loadAddress(), state: s.loadUint(2),
        balance: s.loadCoins(), stake: s.loadCoins(), unlockTs: s.loadUint(32), params: parseParams(s.loadRef()),
    };
    s.endParse();
    return r;
}
export function clientDataCell(owner, proxy, proxyPublicKey, params) {
    const cd = beginCell().storeAddress(owner).storeAddress(proxy).storeBuffer(proxyPublicKey).endCell();
    return beginCell()
        .storeUint(0, 2).storeCoins(0).storeCoins(params.minClientStake).storeUint(0, 64).storeUint(0, 32).storeUint(0n, 256)
        .storeRef(cd).storeRef(paramsCell(params, 0)).endCell();
}
export function parseClient(c) {
    const s = c.beginParse();
    const r = {
        state: s.loadUint(2), balance: s.loadCoins(), stake: s.loadCoins(), tokensUsed: s.loadUintBig(64),
        unlockTs: s.loadUint(32), secretHash: s.loadUintBig(256),
    };
    const cd = s.loadRef().beginParse();
    r.owner = cd.loadAddress(); r.proxy = cd.loadAddress(); r.proxyPublicKey = cd.loadBuffer(32);
    r.params = parseParams(s.loadRef());
    s.endParse();
    return r;
}
export function workerDataCell(owner, proxy, proxyPublicKey, params) {
    return beginCell()
        .storeAddress(owner).storeAddress(proxy).storeBuffer(proxyPublicKey).storeUint(0, 2).storeUint(0, 64)
        .storeRef(paramsCell(params, 0)).endCell();
}
export function parseWorker(c) {
    const s = c.beginParse();
    const r = {
        owner: s.loadAddress(), proxy: s.loadAddress(), proxyPublicKey: s.loadBuffer(32), state: s.loadUint(2),
        tokens: s.loadUintBig(64), params: parseParams(s.loadRef()),
    };
    s.endParse();
    return r;
}

// ---------------------------------------------------------------- signed payments
export function signedInner(op, qid, tokens, target) {
    const b = beginCell().storeUint(op, 32).storeUint(qid, 64);
    if (tokens !== null) b.storeUint(tokens, 64);
    return b.storeAddress(target).endCell();
}
export function signedBody({ op, qid, tokens = null, target, excessesTo, secretKey, innerOverride, outerOp, outerQid, flipBit }) {
    const inner = innerOverride ?? signedInner(op, qid, tokens, target);
    const sig = Buffer.from(sign(inner.hash(), secretKey));
    if (flipBit !== undefined) sig[flipBit >> 3] ^= 1 << (7 - (flipBit & 7));
    return beginCell()
        .storeUint(outerOp ?? op, 32).storeUint(outerQid ?? qid, 64).storeAddress(excessesTo)
        .storeBuffer(sig).storeRef(inner).endCell();
}

// ---------------------------------------------------------------- plain bodies
export const body = {
    opQid: (op, qid) => beginCell().storeUint(op, 32).storeUint(qid, 64),
    qidAddr: (op, qid, addr) => body.opQid(op, qid).storeAddress(addr).endCell(),
    hash: (op, qid, h) => body.opQid(op, qid).storeUint(BigInt('0x' + h), 256).endCell(),
};

// ---------------------------------------------------------------- sandbox driving
export function flat(res) {
    return res.transactions.map((t) => ({ ...flattenTransaction(t), gasUsed: gasUsed(t), raw: t }));
}
export function gasUsed(tx) {
    const d = tx.description;
    if (d.type !== 'generic' || d.computePhase.type !== 'vm') return 0n;
    return d.computePhase.gasUsed;
}
export function txTo(res, addr) {
    const t = flat(res).find((x) => x.on && x.on.equals(addr));
    assert.ok(t, `no transaction on ${addr}`);
    return t;
}
export function assertExit(res, addr, exitCode) {
    const t = txTo(res, addr);
    assert.equal(t.exitCode, exitCode, `exit code on ${addr}: got ${t.exitCode}, want ${exitCode}`);
    if (exitCode === 0) {
        assert.equal(t.aborted, false, 'transaction aborted');
        assert.equal(t.actionResultCode, 0, 'action phase failed');
    } else {
        assert.equal(t.aborted, true, 'transaction should abort');
    }
    return t;
}
export function findOut(res, { from, to, op }) {
    return flat(res).filter(
        (t) => (!from || (t.from && t.from.equals(from))) && (!to || (t.on && t.on.equals(to))) && (op === undefined || t.op === op),
    );
}

export async function stateOf(bc, addr) {
    const c = await bc.getContract(addr);
    const st = c.accountState;
    assert.ok(st && st.type === 'active', `contract ${addr} not active`);
    return st.state.data;
}
export async function balanceOf(bc, addr) {
    return (await bc.getContract(addr)).balance;
}

// A world: root, proxy (+stake), client, worker, deterministic addresses/keys/time.
export async function makeWorld({ params = DEFAULT_PARAMS, stake = toNano('10'), deployChildren = true } = {}) {
    const bc = await Blockchain.create();
    bc.now = FIXED_NOW;
    const w = { bc, params };
    w.rootOwner = await bc.treasury('root-owner');
    w.proxyOwner = await bc.treasury('proxy-owner');
    w.clientOwner = await bc.treasury('client-owner');
    w.workerOwner = await bc.treasury('worker-owner');
    w.stranger = await bc.treasury('stranger');
    w.proxyKey = keyPair('proxy');
    w.otherKey = keyPair('not-the-proxy');
    w.qid = 1000n;
    w.nextQid = () => ++w.qid;

    w.send = async (from, to, value, b, init) =>
        bc.sendMessage(internal({ from, to, value, body: b, stateInit: init, bounce: true }));

    const rootData = rootStorageCell(w.rootOwner.address, 1, rootDataCell(), params);
    w.root = contractAddress(0, { code: CODE.root, data: rootData });
    w.rootInit = { code: CODE.root, data: rootData };
    w.deployRoot = async () => w.send(w.rootOwner.address, w.root, toNano('1'), beginCell().endCell(), w.rootInit);

    const proxyData = proxyDataCell(w.proxyOwner.address, w.proxyKey.publicKey, w.root, params);
    w.proxy = contractAddress(0, { code: CODE.proxy, data: proxyData });
    w.proxyInit = { code: CODE.proxy, data: proxyData };
    const clientData = clientDataCell(w.clientOwner.address, w.proxy, w.proxyKey.publicKey, params);
    w.client = contractAddress(0, { code: CODE.client, data: clientData });
    w.clientInit = { code: CODE.client, data: clientData };
    const workerData = workerDataCell(w.workerOwner.address, w.proxy, w.proxyKey.publicKey, params);
    w.worker = contractAddress(0, { code: CODE.worker, data: workerData });
    w.workerInit = { code: CODE.worker, data: workerData };

    // --- typed senders
    w.increaseStake = (grams, value = grams + toNano('0.1'), from = w.proxyOwner.address) =>
        w.send(from, w.proxy, value,
            body.opQid(OP.ext_proxy_increase_stake, w.nextQid()).storeCoins(grams).storeAddress(from).endCell(), w.proxyInit);
    w.topUp = (amount, value = amount + toNano('0.1'), from = w.clientOwner.address, init = w.clientInit) =>
        w.send(from, w.client, value,
            body.opQid(OP.ext_client_top_up, w.nextQid()).storeCoins(amount).storeAddress(from).endCell(), init);
    w.charge = (tokens, opts = {}) => {
        const qid = opts.qid ?? w.nextQid();
        return w.send(opts.from ?? w.proxyOwner.address, opts.to ?? w.client, opts.value ?? toNano('0.7'),
            signedBody({ op: OP.ext_client_charge_signed, qid, tokens, target: opts.target ?? w.client,
                excessesTo: opts.from ?? w.proxyOwner.address, secretKey: (opts.key ?? w.proxyKey).secretKey, ...opts.sig }));
    };
    w.grantRefund = (tokens, opts = {}) => {
        const qid = opts.qid ?? w.nextQid();
        return w.send(opts.from ?? w.proxyOwner.address, w.client, opts.value ?? toNano('1'),
            signedBody({ op: OP.ext_client_grant_refund_signed, qid, tokens, target: opts.target ?? w.client,
                excessesTo: opts.from ?? w.proxyOwner.address, secretKey: (opts.key ?? w.proxyKey).secretKey, ...opts.sig }));
    };
    w.payout = (tokens, opts = {}) => {
        const qid = opts.qid ?? w.nextQid();
        const op = opts.last ? OP.ext_worker_last_payout_request_signed : OP.ext_worker_payout_request_signed;
        return w.send(opts.from ?? w.workerOwner.address, w.worker, opts.value ?? toNano('0.7'),
            signedBody({ op, qid, tokens, target: opts.target ?? w.worker, excessesTo: opts.from ?? w.workerOwner.address,
                secretKey: (opts.key ?? w.proxyKey).secretKey, ...opts.sig }), opts.init ?? w.workerInit);
    };
    w.proxyClose = (complete, opts = {}) => {
        const qid = opts.qid ?? w.nextQid();
        const op = complete ? OP.ext_proxy_close_complete_request_signed : OP.ext_proxy_close_request_signed;
        return w.send(opts.from ?? w.proxyOwner.address, w.proxy, opts.value ?? toNano('1'),
            signedBody({ op, qid, tokens: null, target: opts.target ?? w.proxy, excessesTo: opts.from ?? w.proxyOwner.address,
                secretKey: (opts.key ?? w.proxyKey).secretKey, ...opts.sig }));
    };
    w.clientOp = (op, extra = (b) => b, from = w.clientOwner.address, value = toNano('0.2')) =>
        w.send(from, w.client, value, extra(body.opQid(op, w.nextQid())).storeAddress(w.clientOwner.address).endCell());
    w.requestRefund = (from = w.clientOwner.address) => w.clientOp(OP.owner_client_request_refund, undefined, from);

    w.rootState = async () => parseRoot(await stateOf(bc, w.root));
    w.proxyState = async () => parseProxy(await stateOf(bc, w.proxy));
    w.clientState = async () => parseClient(await stateOf(bc, w.client));
    w.workerState = async () => parseWorker(await stateOf(bc, w.worker));

    if (deployChildren) {
        assertExit(await w.deployRoot(), w.root, 0);
        assertExit(await w.increaseStake(stake), w.proxy, 0);
    }
    return w;
}
