// Cross-language test vectors.
// (a) WRITE/CHECK testvectors/ton/js/: data cells, addresses, signed bodies, a populated root data cell,
//     code hashes, and a replayable message sequence with the sandbox's exit code and gas per transaction.
//     COCOON_REGEN_VECTORS=1 rewrites the files; otherwise they must match byte for byte.
// (b) READ testvectors/ton/rust/ (written by the Rust crate cocoon-ton) and run its messages in the sandbox.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Address, beginCell, Cell, storeMessage, toNano } from '@ton/core';
import { internal } from '@ton/sandbox';
import {
    makeWorld, CODE, OP, ERR, REPO_DIR, FIXED_NOW, seed, paramsCell, rootDataCell, rootStorageCell, proxyEntry,
    signedBody, body, flat, stateOf, DEFAULT_PARAMS,
} from './lib.mjs';

const JS_DIR = path.join(REPO_DIR, 'testvectors', 'ton', 'js');
// COCOON_RUST_VECTORS_DIR overrides the location (used to self-check this reader).
const RUST_DIR = process.env.COCOON_RUST_VECTORS_DIR || path.join(REPO_DIR, 'testvectors', 'ton', 'rust');
const REGEN = process.env.COCOON_REGEN_VECTORS === '1';

const H = (c) => c.hash().toString('hex');
const raw = (a) => a.toRawString();

const REGISTRY = {
    proxyHashes: ['a1'.repeat(32), '0f'.repeat(32)],
    proxies: [[1, '203.0.113.10:8888'], [2, '203.0.113.11:8888 203.0.113.11:8889']],
    lastProxySeqno: 2,
    workerHashes: ['b2'.repeat(32)],
    modelHashes: ['c3'.repeat(32), 'c4'.repeat(32)],
};

function paramsJson(p) {
    const o = {};
    for (const [k, v] of Object.entries(p)) o[k] = typeof v === 'bigint' ? v.toString() : v;
    return o;
}

// Build all vectors; returns { files: Map<name, Buffer>, json }.
async function buildVectors() {
    const files = new Map();
    const w = await makeWorld({ deployChildren: false });
    const put = (name, cell) => { files.set(name, cell.toBoc({ idx: false, crc32: true })); return name; };

    const cells = [];
    const addCell = (name, cell, note) => cells.push({ name, file: put(`${name}.boc`, cell), hash: H(cell), note });
    addCell('params_mask7', paramsCell(DEFAULT_PARAMS, 7), 'CocoonParams struct_version 3 with proxy+worker+client code (root)');
    addCell('params_mask6', paramsCell(DEFAULT_PARAMS, 6), 'params as embedded in the proxy contract (worker+client code)');
    addCell('params_mask0', paramsCell(DEFAULT_PARAMS, 0), 'params as embedded in client/worker contracts (no code)');
    addCell('root_data_init', w.rootInit.data, 'root c4 at deploy: empty registry, version 1');
    addCell('proxy_data_init', w.proxyInit.data, 'proxy c4 at deploy');
    addCell('client_data_init', w.clientInit.data, 'client c4 at deploy (stake = min_client_stake)');
    addCell('worker_data_init', w.workerInit.data, 'worker c4 at deploy');
    const populatedData = rootDataCell(REGISTRY);
    addCell('root_registry_data', populatedData, 'RootData ref after the root_* messages below');
    const populatedRoot = rootStorageCell(w.rootOwner.address, 1 + 7, populatedData, DEFAULT_PARAMS);
    addCell('root_data_populated', populatedRoot, 'root c4 after the root_* messages below (version 8)');

    // ---- replayable message sequence on a fresh sandbox (now = FIXED_NOW)
    const messages = [];
    const send = async (name, { from, to, contract, value, b, init, expectExit, signed }) => {
        const msg = internal({ from, to, value, body: b, stateInit: init, bounce: true });
        const msgCell = beginCell().store(storeMessage(msg)).endCell();
        const res = await w.bc.sendMessage(msg);
        const txs = flat(res);
        const first = txs[0];
        assert.equal(first.exitCode ?? null, expectExit, `${name}: exit ${first.exitCode}, want ${expectExit}`);
        messages.push({
            name, contract, from: raw(from), to: raw(to), value: value.toString(), with_state_init: !!init,
            body_file: put(`${name}.body.boc`, b), message_file: put(`${name}.msg.boc`, msgCell),
            ...(signed ? { signed } : {}),
            expect_exit: expectExit,
            exit_code: first.exitCode ?? null,
            gas_used: first.gasUsed.toString(),
            total_fees: first.totalFees.toString(),
            chain: txs.map((t) => ({
                on: raw(t.on), op: t.op === undefined ? null : t.op, exit_code: t.exitCode ?? null, aborted: t.aborted,
                gas_used: t.gasUsed.toString(), total_fees: t.totalFees.toString(),
            })),
        });
        return res;
    };
    const q = (n) => BigInt(n);
    const sgn = (op, qid, tokens, target, key, extra = {}) => signedBody({
        op, qid, tokens, target, excessesTo: w.stranger.address, secretKey: key.secretKey, ...extra,
    });
    const signedInfo = (op, qid, tokens, target) => ({ op, qid: qid.toString(), tokens: tokens === null ? null : tokens.toString(), target: raw(target) });

    const own = w.rootOwner.address;
    await send('root_deploy', { from: own, to: w.root, contract: 'root', value: toNano('1'), b: beginCell().endCell(), init: w.rootInit, expectExit: 0 });
    await send('root_add_proxy_hash_1', { from: own, to: w.root, contract: 'root', value: toNano('0.1'), b: body.hash(OP.root_add_proxy_type, q(1), REGISTRY.proxyHashes[0]), expectExit: 0 });
    await send('root_add_proxy_hash_2', { from: own, to: w.root, contract: 'root', value: toNano('0.1'), b: body.hash(OP.root_add_proxy_type, q(2), REGISTRY.proxyHashes[1]), expectExit: 0 });
    await send('root_register_proxy_1', { from: own, to: w.root, contract: 'root', value: toNano('0.1'), b: body.opQid(OP.root_register_proxy, q(3)).storeBuilder(proxyEntry(REGISTRY.proxies[0][1])).endCell(), expectExit: 0 });
    await send('root_register_proxy_2', { from: own, to: w.root, contract: 'root', value: toNano('0.1'), b: body.opQid(OP.root_register_proxy, q(4)).storeBuilder(proxyEntry(REGISTRY.proxies[1][1])).endCell(), expectExit: 0 });
    await send('root_add_worker_hash', { from: own, to: w.root, contract: 'root', value: toNano('0.1'), b: body.hash(OP.root_add_worker_type, q(5), REGISTRY.workerHashes[0]), expectExit: 0 });
    await send('root_add_model_hash_1', { from: own, to: w.root, contract: 'root', value: toNano('0.1'), b: body.hash(OP.root_add_model_type, q(6), REGISTRY.modelHashes[0]), expectExit: 0 });
    await send('root_add_model_hash_2', { from: own, to: w.root, contract: 'root', value: toNano('0.1'), b: body.hash(OP.root_add_model_type, q(7), REGISTRY.modelHashes[1]), expectExit: 0 });
    assert.ok((await stateOf(w.bc, w.root)).equals(populatedRoot), 'root c4 after the registry messages equals the JS-built layout');
    await send('root_add_worker_hash_not_owner', { from: w.stranger.address, to: w.root, contract: 'root', value: toNano('0.1'), b: body.hash(OP.root_add_worker_type, q(8), 'dd'.repeat(32)), expectExit: ERR.NOT_OWNER });

    const po = w.proxyOwner.address;
    await send('proxy_increase_stake_deploy', { from: po, to: w.proxy, contract: 'proxy', value: toNano('10.1'),
        b: body.opQid(OP.ext_proxy_increase_stake, q(10)).storeCoins(toNano('10')).storeAddress(po).endCell(), init: w.proxyInit, expectExit: 0 });
    const co = w.clientOwner.address;
    await send('client_top_up_deploy', { from: co, to: w.client, contract: 'client', value: toNano('5.1'),
        b: body.opQid(OP.ext_client_top_up, q(11)).storeCoins(toNano('5')).storeAddress(co).endCell(), init: w.clientInit, expectExit: 0 });
    const wo = w.workerOwner.address;
    await send('worker_register_deploy', { from: wo, to: w.worker, contract: 'worker', value: toNano('0.3'),
        b: body.qidAddr(OP.owner_worker_register, q(12), wo), init: w.workerInit, expectExit: 0 });

    const K = w.proxyKey, BAD = w.otherKey, S = w.stranger.address;
    const C = OP.ext_client_charge_signed;
    await send('client_charge_1000', { from: S, to: w.client, contract: 'client', value: toNano('0.7'), b: sgn(C, q(20), 1000n, w.client, K), signed: signedInfo(C, q(20), 1000n, w.client), expectExit: 0 });
    await send('client_charge_wrong_key', { from: S, to: w.client, contract: 'client', value: toNano('0.7'), b: sgn(C, q(21), 2000n, w.client, BAD), expectExit: ERR.BAD_SIGNATURE });
    await send('client_charge_flipped_bit', { from: S, to: w.client, contract: 'client', value: toNano('0.7'), b: sgn(C, q(22), 2000n, w.client, K, { flipBit: 100 }), expectExit: ERR.BAD_SIGNATURE });
    await send('client_charge_other_contract', { from: S, to: w.client, contract: 'client', value: toNano('0.7'), b: sgn(C, q(23), 2000n, w.worker, K), expectExit: ERR.WRONG_CONTRACT });
    await send('client_charge_replay', { from: S, to: w.client, contract: 'client', value: toNano('0.7'), b: sgn(C, q(20), 1000n, w.client, K), expectExit: ERR.OLD_TOKENS });
    await send('client_charge_5000', { from: S, to: w.client, contract: 'client', value: toNano('0.7'), b: sgn(C, q(24), 5000n, w.client, K), signed: signedInfo(C, q(24), 5000n, w.client), expectExit: 0 });

    const P = OP.ext_worker_payout_request_signed, PL = OP.ext_worker_last_payout_request_signed;
    await send('worker_payout_4000', { from: S, to: w.worker, contract: 'worker', value: toNano('0.7'), b: sgn(P, q(30), 4000n, w.worker, K), signed: signedInfo(P, q(30), 4000n, w.worker), expectExit: 0 });
    await send('worker_payout_wrong_key', { from: S, to: w.worker, contract: 'worker', value: toNano('0.7'), b: sgn(P, q(31), 5000n, w.worker, BAD), expectExit: ERR.BAD_SIGNATURE });
    await send('worker_payout_flipped_bit', { from: S, to: w.worker, contract: 'worker', value: toNano('0.7'), b: sgn(P, q(32), 5000n, w.worker, K, { flipBit: 3 }), expectExit: ERR.BAD_SIGNATURE });
    await send('worker_payout_other_contract', { from: S, to: w.worker, contract: 'worker', value: toNano('0.7'), b: sgn(P, q(33), 5000n, w.client, K), expectExit: ERR.WRONG_CONTRACT });
    await send('worker_payout_replay', { from: S, to: w.worker, contract: 'worker', value: toNano('0.7'), b: sgn(P, q(30), 4000n, w.worker, K), expectExit: ERR.OLD_TOKENS });
    await send('worker_last_payout_5000', { from: S, to: w.worker, contract: 'worker', value: toNano('0.7'), b: sgn(PL, q(34), 5000n, w.worker, K), signed: signedInfo(PL, q(34), 5000n, w.worker), expectExit: 0 });

    const R = OP.ext_client_grant_refund_signed;
    await send('client_grant_refund_5000', { from: S, to: w.client, contract: 'client', value: toNano('1'), b: sgn(R, q(40), 5000n, w.client, K), signed: signedInfo(R, q(40), 5000n, w.client), expectExit: 0 });
    const CR = OP.ext_proxy_close_request_signed, CC = OP.ext_proxy_close_complete_request_signed;
    await send('proxy_close_request_wrong_key', { from: S, to: w.proxy, contract: 'proxy', value: toNano('1'), b: sgn(CR, q(50), null, w.proxy, BAD), expectExit: ERR.BAD_SIGNATURE });
    await send('proxy_close_request', { from: S, to: w.proxy, contract: 'proxy', value: toNano('1'), b: sgn(CR, q(51), null, w.proxy, K), signed: signedInfo(CR, q(51), null, w.proxy), expectExit: 0 });
    await send('proxy_close_complete_too_early', { from: S, to: w.proxy, contract: 'proxy', value: toNano('1'), b: sgn(CC, q(52), null, w.proxy, K), signed: signedInfo(CC, q(52), null, w.proxy), expectExit: ERR.NOT_UNLOCKED });

    const json = {
        format: 1,
        generator: 'contracts/tests/vectors.test.mjs (@ton/sandbox 0.41.0, Tolk 1.3.0)',
        note: 'Replay `messages` in order on an empty chain with now = FIXED_NOW, lt as produced by @ton/sandbox; each *.msg.boc is the full internal Message (createdLt/createdAt = 0). exit_code null = compute phase skipped (e.g. 1-nanoton notifications). gas_used/total_fees of the first (target) transaction; `chain` lists every transaction the message caused.',
        now: FIXED_NOW,
        seeds: { proxy: seed('proxy').toString('hex'), not_the_proxy: seed('not-the-proxy').toString('hex') },
        seed_rule: 'seed(name) = sha256("cocoon-testvector-seed:" + name); Ed25519 keypair from the 32-byte seed',
        public_keys: { proxy: w.proxyKey.publicKey.toString('hex'), not_the_proxy: w.otherKey.publicKey.toString('hex') },
        params: paramsJson(DEFAULT_PARAMS),
        addresses: {
            root_owner: raw(w.rootOwner.address), proxy_owner: raw(po), client_owner: raw(co), worker_owner: raw(wo), stranger: raw(S),
            root: raw(w.root), proxy: raw(w.proxy), client: raw(w.client), worker: raw(w.worker),
        },
        code_hashes: { root: H(CODE.root), proxy: H(CODE.proxy), client: H(CODE.client), worker: H(CODE.worker) },
        registry: REGISTRY,
        cells,
        messages,
    };
    return { files, json };
}

test('vectors: testvectors/ton/js matches a fresh deterministic run (COCOON_REGEN_VECTORS=1 rewrites)', async () => {
    const { files, json } = await buildVectors();
    const jsonText = JSON.stringify(json, null, 2) + '\n';
    if (REGEN) {
        fs.rmSync(JS_DIR, { recursive: true, force: true });
        fs.mkdirSync(JS_DIR, { recursive: true });
        for (const [name, buf] of files) fs.writeFileSync(path.join(JS_DIR, name), buf);
        fs.writeFileSync(path.join(JS_DIR, 'vectors.json'), jsonText);
    }
    assert.ok(fs.existsSync(path.join(JS_DIR, 'vectors.json')), `${JS_DIR}/vectors.json missing: run COCOON_REGEN_VECTORS=1 npm test`);
    const diffs = [];
    for (const [name, buf] of files) {
        const p = path.join(JS_DIR, name);
        if (!fs.existsSync(p)) diffs.push(`missing ${name}`);
        else if (!fs.readFileSync(p).equals(buf)) diffs.push(`differs ${name}`);
    }
    const committed = fs.readdirSync(JS_DIR).filter((f) => f !== 'vectors.json' && !files.has(f));
    for (const f of committed) diffs.push(`stale file ${f}`);
    if (fs.readFileSync(path.join(JS_DIR, 'vectors.json'), 'utf-8') !== jsonText) diffs.push('differs vectors.json');
    assert.deepEqual(diffs, [], 'committed JS vectors differ from this run; if the change is intended: COCOON_REGEN_VECTORS=1 npm test');
});

// ------------------------------------------------------------------ Rust-written vectors
test('vectors: testvectors/ton/rust (cocoon-ton) agree with the contracts', async (t) => {
    const vpath = path.join(RUST_DIR, 'vectors.json');
    if (!fs.existsSync(vpath)) {
        const msg = `${vpath} does not exist yet (the Rust crate cocoon-ton writes it)`;
        if (process.env.CI) assert.fail(`${msg}; CI requires it`);
        t.skip(msg);
        return;
    }
    const rv = JSON.parse(fs.readFileSync(vpath, 'utf-8'));
    for (const k of ['seeds', 'addresses', 'code_hashes', 'messages']) assert.ok(k in rv, `rust vectors.json lacks "${k}"`);
    const w = await makeWorld();
    const ours = {
        seeds: { proxy: seed('proxy').toString('hex'), not_the_proxy: seed('not-the-proxy').toString('hex') },
        addresses: {
            root_owner: w.rootOwner.address, proxy_owner: w.proxyOwner.address, client_owner: w.clientOwner.address,
            worker_owner: w.workerOwner.address, stranger: w.stranger.address,
            root: w.root, proxy: w.proxy, client: w.client, worker: w.worker,
        },
        code_hashes: { root: H(CODE.root), proxy: H(CODE.proxy), client: H(CODE.client), worker: H(CODE.worker) },
    };
    let compared = 0;
    for (const [k, v] of Object.entries(rv.code_hashes)) {
        if (!(k in ours.code_hashes)) continue;
        assert.equal(String(v).toLowerCase(), ours.code_hashes[k], `code hash of ${k} differs: testvectors/ton/rust was generated from another contracts/build (regenerate with: cargo run -p cocoon-ton --example make-vectors)`);
        compared++;
    }
    for (const [k, v] of Object.entries(rv.seeds)) {
        if (!(k in ours.seeds)) continue;
        assert.equal(String(v).toLowerCase(), ours.seeds[k], `seed ${k}`);
    }
    for (const [k, v] of Object.entries(rv.addresses)) {
        if (!(k in ours.addresses)) continue;
        const a = typeof v === 'string' ? v : v.raw;
        assert.equal(raw(Address.parse(a)), raw(ours.addresses[k]), `address of ${k}`);
        compared++;
    }
    assert.ok(compared > 0, 'rust vectors share no code hash/address keys with ours (expected keys: root, proxy, client, worker, *_owner)');

    // Cells with the same name as ours (params, init data, registry) must be bit-identical.
    const jsCells = fs.existsSync(path.join(JS_DIR, 'vectors.json'))
        ? Object.fromEntries(JSON.parse(fs.readFileSync(path.join(JS_DIR, 'vectors.json'), 'utf-8')).cells.map((c) => [c.name, c.hash]))
        : {};
    let cellsCompared = 0;
    for (const c of rv.cells ?? []) {
        const cell = Cell.fromBoc(fs.readFileSync(path.join(RUST_DIR, c.file)))[0];
        if (c.hash) assert.equal(H(cell), String(c.hash).toLowerCase(), `rust cell ${c.name}: file hash != listed hash`);
        if (jsCells[c.name]) { assert.equal(H(cell), jsCells[c.name], `rust cell ${c.name} differs from testvectors/ton/js/${c.name}.boc`); cellsCompared++; }
    }
    if ((rv.cells ?? []).length) assert.ok(cellsCompared > 0, 'no rust cell shares a name with the JS cells');

    // Deploy the worker as well (the world already has root, proxy+stake; top up the client).
    assert.equal(flat(await w.topUp(toNano('5')))[0].exitCode, 0);
    await w.send(w.workerOwner.address, w.worker, toNano('0.3'), body.qidAddr(OP.owner_worker_register, 1n, w.workerOwner.address), w.workerInit);
    assert.ok(rv.messages.length > 0, 'rust vectors contain no messages');
    for (const m of rv.messages) {
        const target = ours.addresses[m.contract];
        assert.ok(target, `message ${m.name}: unknown contract "${m.contract}"`);
        const cell = Cell.fromBoc(fs.readFileSync(path.join(RUST_DIR, m.file)))[0];
        const res = await w.send(w.stranger.address, target, toNano(m.value_ton ?? '1'), cell);
        const first = flat(res)[0];
        assert.equal(first.exitCode ?? null, m.expect_exit, `rust message ${m.name} on ${m.contract}: exit ${first.exitCode}, expected ${m.expect_exit}`);
        if (m.expect_exit === 0) assert.equal(first.aborted, false, `rust message ${m.name} aborted`);
    }
});
