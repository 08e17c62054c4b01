// Worker contract and the proxy contract's own operations.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { beginCell, contractAddress, toNano } from '@ton/core';
import { makeWorld, assertExit, body, OP, ERR, STATE, findOut, stateOf, balanceOf, clientDataCell, CODE, paramsCell, DEFAULT_PARAMS } from './lib.mjs';

const PRICE = 20n;
const FEE = 15n;

async function funded(amount = toNano('20')) {
    const w = await makeWorld();
    assertExit(await w.topUp(amount), w.proxy, 0);
    return w;
}

test('worker: signed payout pays worker_part to the owner and credits proxy_part as commission', async () => {
    const w = await funded();
    const tokens = 10n ** 8n;
    const ownerBefore = await balanceOf(w.bc, w.workerOwner.address);
    const r = await w.payout(tokens); // deploys the worker too (state_init attached)
    assertExit(r, w.worker, 0);
    assertExit(r, w.proxy, 0);
    const pay = findOut(r, { from: w.proxy, to: w.workerOwner.address, op: OP.payout });
    assert.equal(pay.length, 1);
    assert.equal(pay[0].value, tokens * FEE);
    assert.ok(await balanceOf(w.bc, w.workerOwner.address) >= ownerBefore + tokens * FEE);
    assert.equal((await w.proxyState()).balance, tokens * (PRICE - FEE));
    assert.equal((await w.workerState()).tokens, tokens);
    // the request to the proxy carries the runner-visible state and the split
    const req = findOut(r, { from: w.worker, to: w.proxy, op: OP.worker_proxy_request })[0].body.beginParse();
    req.loadUint(32); req.loadUintBig(64);
    assert.ok(req.loadAddress().equals(w.workerOwner.address));
    assert.equal(req.loadUint(2), 0);
    assert.equal(req.loadUintBig(64), tokens);
    const p = req.loadMaybeRef().beginParse();
    assert.deepEqual([p.loadUint(32), p.loadCoins(), p.loadCoins()], [OP.worker_proxy_payout_request, tokens * FEE, tokens * (PRICE - FEE)]);
    // second payout pays only the delta
    const r2 = await w.payout(tokens + 1000n);
    assertExit(r2, w.worker, 0);
    assert.equal(findOut(r2, { from: w.proxy, to: w.workerOwner.address, op: OP.payout })[0].value, 1000n * FEE);
});

test('worker: every signature path and monotonicity', async () => {
    const w = await funded();
    assertExit(await w.payout(1000n), w.worker, 0);
    const before = await stateOf(w.bc, w.worker);
    assertExit(await w.payout(2000n, { key: w.otherKey }), w.worker, ERR.BAD_SIGNATURE);
    assertExit(await w.payout(2000n, { sig: { flipBit: 0 } }), w.worker, ERR.BAD_SIGNATURE);
    assertExit(await w.payout(2000n, { sig: { flipBit: 511 } }), w.worker, ERR.BAD_SIGNATURE);
    assertExit(await w.payout(2000n, { target: w.client }), w.worker, ERR.WRONG_CONTRACT);
    assertExit(await w.payout(1000n), w.worker, ERR.OLD_TOKENS);
    assertExit(await w.payout(10n), w.worker, ERR.OLD_TOKENS);
    assertExit(await w.payout(2000n, { sig: { outerOp: OP.ext_worker_last_payout_request_signed } }), w.worker, ERR.SIGNED_MISMATCH);
    assertExit(await w.payout(2000n, { value: toNano('0.01') }), w.worker, ERR.LOW_MSG_VALUE);
    assert.ok((await stateOf(w.bc, w.worker)).equals(before));
});

test('worker: last payout accepts an equal count and closes the contract', async () => {
    const w = await funded();
    assertExit(await w.payout(1000n), w.worker, 0);
    assertExit(await w.payout(999n, { last: true }), w.worker, ERR.OLD_TOKENS);
    const r = await w.payout(1000n, { last: true });
    assertExit(r, w.worker, 0);
    assertExit(r, w.proxy, 0);
    const st = await w.workerState();
    assert.equal(st.state, STATE.closed);
    assert.equal(st.tokens, 1000n);
    assertExit(await w.payout(2000n), w.worker, ERR.WRONG_STATE);
    assertExit(await w.payout(2000n, { last: true }), w.worker, ERR.WRONG_STATE);
});

test('worker: owner_worker_register notifies the proxy; non-owner refused', async () => {
    const w = await funded();
    const reg = (from) => w.send(from, w.worker, toNano('0.3'), body.qidAddr(OP.owner_worker_register, w.nextQid(), from), w.workerInit);
    assertExit(await reg(w.stranger.address), w.worker, ERR.NOT_OWNER);
    const r = await reg(w.workerOwner.address);
    assertExit(r, w.worker, 0);
    const note = findOut(r, { from: w.worker, to: w.proxy, op: OP.worker_proxy_request });
    assert.equal(note.length, 1);
    assert.equal(note[0].value, 1n);
    assert.equal(findOut(r, { from: w.worker, to: w.workerOwner.address, op: OP.excesses }).length, 1);
    assertExit(await w.send(w.stranger.address, w.worker, toNano('0.1'), body.opQid(0x77, 1n).endCell()), w.worker, ERR.UNKNOWN_OP);
});

test('proxy: refuses worker requests not from the derived worker address', async () => {
    const w = await funded();
    const payload = beginCell().storeUint(OP.worker_proxy_payout_request, 32).storeCoins(toNano('5')).storeCoins(0).storeAddress(w.stranger.address).endCell();
    const forged = body.opQid(OP.worker_proxy_request, 1n).storeAddress(w.stranger.address).storeUint(0, 2).storeUint(10, 64).storeMaybeRef(payload).endCell();
    const before = await balanceOf(w.bc, w.proxy);
    assertExit(await w.send(w.stranger.address, w.proxy, toNano('0.2'), forged), w.proxy, ERR.BAD_SENDER);
    assert.equal(await balanceOf(w.bc, w.proxy), before);
    const got = (await w.bc.runGetMethod(w.proxy, 'get_worker_address', [{ type: 'slice', cell: beginCell().storeAddress(w.workerOwner.address).endCell() }])).stackReader.readAddress();
    assert.ok(got.equals(w.worker));
});

test('proxy: worker payout larger than the client pool bounces; stake and commission untouched', async () => {
    const w = await funded(toNano('1'));
    const r = await w.payout(10n ** 9n); // 15 TON worker part, pool holds 1 TON
    assertExit(r, w.worker, 0);
    assertExit(r, w.proxy, ERR.INSUFFICIENT_FUNDS);
    const ps = await w.proxyState();
    assert.equal(ps.stake, toNano('10'));
    assert.equal(ps.balance, 0n);
    assert.ok(findOut(r, { from: w.proxy, to: w.worker }).some((t) => t.inMessageBounced));
});

test('proxy: commission withdrawal (ext_proxy_payout_request) pays balance to the owner', async () => {
    const w = await funded();
    assertExit(await w.payout(10n ** 8n), w.worker, 0);
    const commission = (await w.proxyState()).balance;
    assert.equal(commission, 10n ** 8n * 5n);
    const r = await w.send(w.stranger.address, w.proxy, toNano('0.2'), body.qidAddr(OP.ext_proxy_payout_request, 9n, w.stranger.address));
    assertExit(r, w.proxy, 0);
    const pay = findOut(r, { from: w.proxy, to: w.proxyOwner.address, op: OP.payout });
    assert.equal(pay.length, 1, 'paid to the owner even when a stranger triggers it');
    assert.equal(pay[0].value, commission);
    assert.equal((await w.proxyState()).balance, 0n);
    assertExit(await w.send(w.stranger.address, w.proxy, toNano('0.01'), body.qidAddr(OP.ext_proxy_payout_request, 9n, w.stranger.address)), w.proxy, ERR.LOW_MSG_VALUE);
});

test('proxy: increase stake requires value >= grams + gas', async () => {
    const w = await makeWorld();
    assertExit(await w.increaseStake(toNano('2'), toNano('2.01')), w.proxy, ERR.LOW_MSG_VALUE);
    assertExit(await w.increaseStake(0n, toNano('1')), w.proxy, ERR.STAKE_TOO_LOW);
    const bal = await balanceOf(w.bc, w.proxy);
    assertExit(await w.increaseStake(toNano('2')), w.proxy, 0);
    assert.equal((await w.proxyState()).stake, toNano('12'));
    assert.equal(await balanceOf(w.bc, w.proxy), bal + toNano('2'));
});

test('proxy: save_state records (do_not_process) are accepted and ignored', async () => {
    const w = await funded();
    const before = await stateOf(w.bc, w.proxy);
    const save = body.opQid(OP.do_not_process, 5n).storeUint(OP.proxy_save_state, 32).storeInt(7, 32).storeUint(0xabcn, 256).endCell();
    const r = await w.send(w.proxyOwner.address, w.proxy, 1n, save);
    const t = findOut(r, { to: w.proxy })[0];
    assert.equal(t.op, OP.do_not_process);
    assert.ok((await stateOf(w.bc, w.proxy)).equals(before));
    assertExit(await w.send(w.proxyOwner.address, w.proxy, toNano('0.1'), save), w.proxy, 0);
    assertExit(await w.send(w.proxyOwner.address, w.proxy, toNano('0.1'), body.opQid(0x42, 1n).endCell()), w.proxy, ERR.UNKNOWN_OP);
});

test('proxy: signed close request / complete with proxy_delay_before_close; every signature path', async () => {
    const w = await funded(toNano('5'));
    assertExit(await w.payout(10n ** 7n), w.worker, 0);
    const before = await stateOf(w.bc, w.proxy);
    assertExit(await w.proxyClose(false, { key: w.otherKey }), w.proxy, ERR.BAD_SIGNATURE);
    assertExit(await w.proxyClose(false, { sig: { flipBit: 200 } }), w.proxy, ERR.BAD_SIGNATURE);
    assertExit(await w.proxyClose(false, { target: w.worker }), w.proxy, ERR.WRONG_CONTRACT);
    assertExit(await w.proxyClose(false, { sig: { outerOp: OP.ext_proxy_close_complete_request_signed } }), w.proxy, ERR.SIGNED_MISMATCH);
    assertExit(await w.proxyClose(true), w.proxy, ERR.WRONG_STATE);
    assert.ok((await stateOf(w.bc, w.proxy)).equals(before));

    assertExit(await w.proxyClose(false), w.proxy, 0);
    let ps = await w.proxyState();
    assert.equal(ps.state, STATE.closing);
    assert.equal(ps.unlockTs, w.bc.now + 3600);
    assertExit(await w.proxyClose(false), w.proxy, ERR.WRONG_STATE, 'replayed close request');
    // while closing: clients still get their final refunds ...
    const rg = await w.grantRefund(10n ** 7n);
    assertExit(rg, w.proxy, 0);
    assert.equal(findOut(rg, { from: w.proxy, to: w.clientOwner.address, op: OP.payout })[0].value, toNano('5') - 10n ** 7n * 20n);
    // ... and a top-up from a new client stays in the pool (its balance counts it) and can be withdrawn
    const data2 = clientDataCell(w.stranger.address, w.proxy, w.proxyKey.publicKey, w.params);
    const client2 = contractAddress(0, { code: CODE.client, data: data2 });
    const init2 = { code: CODE.client, data: data2 };
    const topUp2 = () => w.send(w.stranger.address, client2, toNano('2.1'),
        body.opQid(OP.ext_client_top_up, 1n).storeCoins(toNano('2')).storeAddress(w.stranger.address).endCell(), init2);
    const withdraw2 = () => w.send(w.stranger.address, client2, toNano('0.2'), body.qidAddr(OP.owner_client_withdraw, 2n, w.stranger.address));
    const poolBefore = await balanceOf(w.bc, w.proxy);
    const rt = await topUp2();
    assertExit(rt, w.proxy, 0);
    assert.equal(findOut(rt, { from: w.proxy, to: w.stranger.address, op: OP.payout }).length, 0, 'not handed back while closing');
    assert.equal(await balanceOf(w.bc, w.proxy), poolBefore + toNano('2'));
    const rw = await withdraw2();
    assertExit(rw, w.proxy, 0);
    assert.equal(findOut(rw, { from: w.proxy, to: w.stranger.address, op: OP.payout })[0].value, toNano('1'));
    w.bc.now += 3599;
    assertExit(await w.proxyClose(true), w.proxy, ERR.NOT_UNLOCKED);
    w.bc.now += 1;
    const total = await balanceOf(w.bc, w.proxy);
    const r = await w.proxyClose(true);
    assertExit(r, w.proxy, 0);
    const pay = findOut(r, { from: w.proxy, to: w.proxyOwner.address, op: OP.payout });
    assert.equal(pay.length, 1);
    assert.ok(pay[0].value > total, 'everything (stake + commission + rest + attached value) goes to the owner');
    assert.equal(await balanceOf(w.bc, w.proxy), 0n);
    ps = await w.proxyState();
    assert.deepEqual([ps.state, ps.stake, ps.balance], [STATE.closed, 0n, 0n]);
    assertExit(await w.proxyClose(true), w.proxy, ERR.WRONG_STATE);
    // closed: a top-up is handed straight back, and the inflated client balance cannot be withdrawn
    const rc = await topUp2();
    assertExit(rc, w.proxy, 0);
    assert.equal(findOut(rc, { from: w.proxy, to: w.stranger.address, op: OP.payout })[0].value, toNano('2'));
    const rw2 = await withdraw2();
    assertExit(rw2, client2, 0);
    assertExit(rw2, w.proxy, ERR.WRONG_STATE);
});

test('proxy: owner_proxy_close starts closing (owner only)', async () => {
    const w = await funded();
    const close = (from) => w.send(from, w.proxy, toNano('0.2'), body.qidAddr(OP.owner_proxy_close, w.nextQid(), from));
    assertExit(await close(w.stranger.address), w.proxy, ERR.NOT_OWNER);
    assertExit(await close(w.proxyOwner.address), w.proxy, 0);
    const ps = await w.proxyState();
    assert.equal(ps.state, STATE.closing);
    assert.equal(ps.unlockTs, w.bc.now + 3600);
    assertExit(await close(w.proxyOwner.address), w.proxy, ERR.WRONG_STATE);
    assertExit(await w.increaseStake(toNano('1')), w.proxy, ERR.WRONG_STATE);
});

test('getters: get_client_data / get_worker_data / get_proxy_data reflect storage', async () => {
    const w = await funded(toNano('3'));
    assertExit(await w.charge(1000n), w.client, 0);
    assertExit(await w.payout(400n), w.worker, 0);
    const c = (await w.bc.runGetMethod(w.client, 'get_client_data')).stackReader;
    assert.ok(c.readAddress().equals(w.clientOwner.address));
    assert.ok(c.readAddress().equals(w.proxy));
    assert.equal(c.readBigNumber(), BigInt('0x' + w.proxyKey.publicKey.toString('hex')));
    assert.deepEqual([c.readNumber(), c.readBigNumber(), c.readBigNumber(), c.readBigNumber(), c.readNumber(), c.readBigNumber()],
        [STATE.normal, toNano('3') - 1000n * PRICE, toNano('1'), 1000n, 0, 0n]);
    const wk = (await w.bc.runGetMethod(w.worker, 'get_worker_data')).stackReader;
    assert.ok(wk.readAddress().equals(w.workerOwner.address));
    assert.ok(wk.readAddress().equals(w.proxy));
    wk.readBigNumber();
    assert.deepEqual([wk.readNumber(), wk.readBigNumber()], [STATE.normal, 400n]);
    const p = (await w.bc.runGetMethod(w.proxy, 'get_proxy_data')).stackReader;
    assert.ok(p.readAddress().equals(w.proxyOwner.address));
    p.readBigNumber();
    assert.ok(p.readAddress().equals(w.root));
    assert.deepEqual([p.readNumber(), p.readBigNumber(), p.readBigNumber(), p.readNumber(), p.readNumber()],
        [STATE.normal, 400n * (PRICE - FEE), toNano('10'), 0, 1]);
});

test('proxy: params without child code cannot verify children (1016)', async () => {
    const w = await makeWorld({ deployChildren: false });
    const noCode = beginCell()
        .storeAddress(w.proxyOwner.address).storeBuffer(w.proxyKey.publicKey).storeAddress(w.root)
        .storeUint(0, 2).storeCoins(0).storeCoins(0).storeUint(0, 32)
        .storeRef(paramsCell(DEFAULT_PARAMS, 0)).endCell();
    const init = { code: CODE.proxy, data: noCode };
    const addr = contractAddress(0, init);
    const st = beginCell().storeUint(0, 2).storeCoins(0).storeCoins(0).storeUint(0, 64).storeUint(0, 256).endCell();
    const req = body.opQid(OP.client_proxy_request, 1n).storeAddress(w.clientOwner.address).storeRef(st).storeMaybeRef(null).endCell();
    assertExit(await w.send(w.stranger.address, addr, toNano('1'), req, init), addr, ERR.NO_CHILD_CODE);
    const wreq = body.opQid(OP.worker_proxy_request, 1n).storeAddress(w.workerOwner.address).storeUint(0, 2).storeUint(0, 64).storeMaybeRef(null).endCell();
    assertExit(await w.send(w.stranger.address, addr, toNano('1'), wreq, init), addr, ERR.NO_CHILD_CODE);
});
