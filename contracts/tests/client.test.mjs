// Client contract (+ the proxy contract's side of client requests).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { beginCell, toNano } from '@ton/core';
import { makeWorld, assertExit, body, OP, ERR, STATE, findOut, stateOf, balanceOf, signedInner, txTo } from './lib.mjs';

const PRICE = 20n; // DEFAULT_PARAMS.pricePerToken

async function funded(amount = toNano('5')) {
    const w = await makeWorld();
    const r = await w.topUp(amount);
    assertExit(r, w.client, 0);
    assertExit(r, w.proxy, 0);
    return w;
}

test('client: top-up by anyone credits balance and moves the coins to the proxy contract', async () => {
    const w = await makeWorld();
    const proxyBefore = await balanceOf(w.bc, w.proxy);
    const r = await w.topUp(toNano('5'), toNano('5.2'), w.stranger.address);
    assertExit(r, w.client, 0);
    assertExit(r, w.proxy, 0);
    const st = await w.clientState();
    assert.equal(st.balance, toNano('5'));
    assert.equal(st.stake, toNano('1'), 'initial stake = min_client_stake');
    assert.equal(await balanceOf(w.bc, w.proxy), proxyBefore + toNano('5'), 'proxy keeps exactly the top-up');
    assert.equal(await balanceOf(w.bc, w.client), toNano('0.05'), 'client keeps only its gas reserve');
    assert.equal(findOut(r, { from: w.proxy, to: w.stranger.address, op: OP.excesses }).length, 1);
    // value must cover amount + gas
    assertExit(await w.topUp(toNano('5'), toNano('5.01')), w.client, ERR.LOW_MSG_VALUE);
});

test('client: charge signed by the proxy; every signature path', async () => {
    const w = await funded();
    const r = await w.charge(1000n);
    assertExit(r, w.client, 0);
    let st = await w.clientState();
    assert.equal(st.tokensUsed, 1000n);
    assert.equal(st.balance, toNano('5') - 1000n * PRICE);
    // the proxy is notified with the new state (1 nanoton; runner reads the transaction)
    const note = findOut(r, { from: w.client, to: w.proxy, op: OP.client_proxy_request });
    assert.equal(note.length, 1);
    assert.equal(note[0].value, 1n);
    const before = await stateOf(w.bc, w.client);

    // wrong key
    assertExit(await w.charge(2000n, { key: w.otherKey }), w.client, ERR.BAD_SIGNATURE);
    // one flipped signature bit
    assertExit(await w.charge(2000n, { sig: { flipBit: 77 } }), w.client, ERR.BAD_SIGNATURE);
    // payload for another contract (the worker) signed by the right key
    assertExit(await w.charge(2000n, { target: w.worker }), w.client, ERR.WRONG_CONTRACT);
    // replay of the same count / an older count
    assertExit(await w.charge(1000n), w.client, ERR.OLD_TOKENS);
    assertExit(await w.charge(999n), w.client, ERR.OLD_TOKENS);
    // inner op differs from outer op (a grant-refund payload relabelled as a charge)
    const qid = 555n;
    const inner = signedInner(OP.ext_client_grant_refund_signed, qid, 5000n, w.client);
    assertExit(await w.charge(5000n, { qid, sig: { innerOverride: inner } }), w.client, ERR.SIGNED_MISMATCH);
    // inner qid differs from outer qid
    assertExit(await w.charge(5000n, { qid, sig: { outerQid: 556n } }), w.client, ERR.SIGNED_MISMATCH);
    // junk after the signed payload
    const junk = beginCell().storeUint(OP.ext_client_charge_signed, 32).storeUint(qid, 64).storeUint(5000n, 64).storeAddress(w.client).storeUint(1, 1).endCell();
    assertExit(await w.charge(5000n, { qid, sig: { innerOverride: junk } }), w.client, ERR.CELL_UNDERFLOW);
    // not enough gas attached
    assertExit(await w.charge(5000n, { value: toNano('0.01') }), w.client, ERR.LOW_MSG_VALUE);
    assert.ok((await stateOf(w.bc, w.client)).equals(before), 'refused charges leave state unchanged');

    // anyone may submit a valid receipt; excess goes to the submitter's address
    const r2 = await w.charge(3000n, { from: w.stranger.address });
    assertExit(r2, w.client, 0);
    assert.equal(findOut(r2, { from: w.client, to: w.stranger.address, op: OP.excesses }).length, 1);
    st = await w.clientState();
    assert.equal(st.balance, toNano('5') - 3000n * PRICE);
});

test('client: charge floors the balance at 0', async () => {
    const w = await funded(toNano('1'));
    assertExit(await w.charge(10n ** 12n), w.client, 0);
    const st = await w.clientState();
    assert.equal(st.balance, 0n);
    assert.equal(st.tokensUsed, 10n ** 12n);
});

test('client: withdraw only balance - stake, owner only, normal state only', async () => {
    const w = await funded(toNano('5'));
    assertExit(await w.clientOp(OP.owner_client_withdraw, undefined, w.stranger.address), w.client, ERR.NOT_OWNER);
    const ownerBefore = await balanceOf(w.bc, w.clientOwner.address);
    const r = await w.clientOp(OP.owner_client_withdraw);
    assertExit(r, w.client, 0);
    assertExit(r, w.proxy, 0);
    const pay = findOut(r, { from: w.proxy, to: w.clientOwner.address, op: OP.payout });
    assert.equal(pay.length, 1);
    assert.equal(pay[0].value, toNano('4'));
    assert.ok(await balanceOf(w.bc, w.clientOwner.address) > ownerBefore + toNano('4'));
    const st = await w.clientState();
    assert.equal(st.balance, toNano('1'));
    assertExit(await w.clientOp(OP.owner_client_withdraw), w.client, ERR.NOTHING_TO_WITHDRAW);
});

test('client: increase stake (owner, strictly larger), change secret hash, register', async () => {
    const w = await funded();
    const inc = (s, from) => w.clientOp(OP.owner_client_increase_stake, (b) => b.storeCoins(s), from);
    assertExit(await inc(toNano('2'), w.stranger.address), w.client, ERR.NOT_OWNER);
    assertExit(await inc(toNano('1')), w.client, ERR.STAKE_TOO_LOW);
    assertExit(await inc(toNano('2')), w.client, 0);
    assert.equal((await w.clientState()).stake, toNano('2'));

    const secret = 0xabcdefn;
    assertExit(await w.clientOp(OP.owner_client_change_secret_hash, (b) => b.storeUint(secret, 256), w.stranger.address), w.client, ERR.NOT_OWNER);
    const r = await w.clientOp(OP.owner_client_change_secret_hash, (b) => b.storeUint(secret, 256));
    assertExit(r, w.client, 0);
    assert.equal((await w.clientState()).secretHash, secret);
    // state notification carries the new secret hash to the proxy runner
    const note = findOut(r, { from: w.client, to: w.proxy, op: OP.client_proxy_request })[0];
    const s = note.body.beginParse();
    s.loadUint(32); s.loadUintBig(64); s.loadAddress();
    const stc = s.loadRef().beginParse();
    stc.loadUint(2); stc.loadCoins(); assert.equal(stc.loadCoins(), toNano('2')); stc.loadUintBig(64);
    assert.equal(stc.loadUintBig(256), secret);
    assert.equal(s.loadBit(), false, 'no payload');

    const r2 = await w.clientOp(OP.owner_client_change_secret_hash_and_top_up, (b) => b.storeCoins(toNano('1')).storeUint(7n, 256), w.clientOwner.address, toNano('1.2'));
    assertExit(r2, w.client, 0);
    assertExit(r2, w.proxy, 0);
    let st = await w.clientState();
    assert.equal(st.secretHash, 7n);
    assert.equal(st.balance, toNano('6'));

    const r3 = await w.clientOp(OP.owner_client_register, (b) => b.storeUint(0x1122334455667788n, 64));
    assertExit(r3, w.client, 0);
    const reg = findOut(r3, { from: w.client, to: w.proxy, op: OP.client_proxy_request })[0];
    const rs = reg.body.beginParse();
    rs.loadUint(32); rs.loadUintBig(64); rs.loadAddress(); rs.loadRef();
    const p = rs.loadMaybeRef().beginParse();
    assert.equal(p.loadUint(32), OP.client_proxy_register);
    assert.equal(p.loadUintBig(64), 0x1122334455667788n, 'the proxy runner reads the nonce here');
    assertExit(await w.clientOp(OP.owner_client_register, (b) => b.storeUint(1n, 64), w.stranger.address), w.client, ERR.NOT_OWNER);
});

test('client: two-phase close; too early refused, after the delay refund_force from the proxy stake', async () => {
    const w = await funded(toNano('5'));
    assertExit(await w.charge(1000n), w.client, 0);
    assertExit(await w.requestRefund(w.stranger.address), w.client, ERR.NOT_OWNER);
    const r1 = await w.requestRefund();
    assertExit(r1, w.client, 0);
    assertExit(r1, w.proxy, 0);
    // balance above the stake is refunded at once
    const expectBalance = toNano('5') - 1000n * PRICE;
    assert.equal(findOut(r1, { from: w.proxy, to: w.clientOwner.address, op: OP.payout })[0].value, expectBalance - toNano('1'));
    let st = await w.clientState();
    assert.equal(st.state, STATE.closing);
    assert.equal(st.unlockTs, w.bc.now + 86400);
    assert.equal(st.balance, toNano('1'));
    // withdraw / stake increase are not allowed while closing
    assertExit(await w.clientOp(OP.owner_client_withdraw), w.client, ERR.WRONG_STATE);

    w.bc.now += 86399;
    assertExit(await w.requestRefund(), w.client, ERR.NOT_UNLOCKED);
    w.bc.now += 1;
    const stakeBefore = (await w.proxyState()).stake;
    const r2 = await w.requestRefund();
    assertExit(r2, w.client, 0);
    assertExit(r2, w.proxy, 0);
    assert.equal(findOut(r2, { from: w.proxy, to: w.clientOwner.address, op: OP.payout })[0].value, toNano('1'));
    assert.equal((await w.proxyState()).stake, stakeBefore - toNano('1'), 'refund_force is paid from the proxy stake');
    st = await w.clientState();
    assert.equal(st.state, STATE.closed);
    assert.equal(st.balance, 0n);
    // closed is final
    assertExit(await w.requestRefund(), w.client, ERR.WRONG_STATE);
    assertExit(await w.charge(2000n), w.client, ERR.WRONG_STATE);
    assertExit(await w.topUp(toNano('1')), w.client, ERR.WRONG_STATE);
});

test('client: refund_force pays at most the proxy stake (vanished proxy with a small stake)', async () => {
    const w = await makeWorld({ stake: toNano('0.5') });
    assertExit(await w.topUp(toNano('3')), w.client, 0);
    assertExit(await w.clientOp(OP.owner_client_increase_stake, (b) => b.storeCoins(toNano('3'))), w.client, 0);
    assertExit(await w.requestRefund(), w.client, 0); // balance == stake: nothing refunded now
    w.bc.now += 86400;
    const r = await w.requestRefund();
    assertExit(r, w.proxy, 0);
    assert.equal(findOut(r, { from: w.proxy, to: w.clientOwner.address, op: OP.payout })[0].value, toNano('0.5'));
    assert.equal((await w.proxyState()).stake, 0n);
});

test('client: top-up-reopen brings a closing contract back to normal (owner only)', async () => {
    const w = await funded();
    assertExit(await w.requestRefund(), w.client, 0);
    const reopen = (from) => w.clientOp(OP.owner_client_top_up_reopen, (b) => b.storeCoins(toNano('1')), from, toNano('1.2'));
    assertExit(await reopen(w.stranger.address), w.client, ERR.NOT_OWNER);
    const r = await reopen();
    assertExit(r, w.client, 0);
    assertExit(r, w.proxy, 0);
    const st = await w.clientState();
    assert.equal(st.state, STATE.normal);
    assert.equal(st.unlockTs, 0);
    assert.equal(st.balance, toNano('2'));
});

test('client: signed grant-refund is final and refunds the rest of the balance', async () => {
    const w = await funded(toNano('5'));
    assertExit(await w.charge(1000n), w.client, 0);
    const before = await stateOf(w.bc, w.client);
    assertExit(await w.grantRefund(2000n, { key: w.otherKey }), w.client, ERR.BAD_SIGNATURE);
    assertExit(await w.grantRefund(2000n, { sig: { flipBit: 300 } }), w.client, ERR.BAD_SIGNATURE);
    assertExit(await w.grantRefund(2000n, { target: w.proxy }), w.client, ERR.WRONG_CONTRACT);
    assertExit(await w.grantRefund(999n), w.client, ERR.OLD_TOKENS);
    assert.ok((await stateOf(w.bc, w.client)).equals(before));
    // equal count is allowed for the final message
    const r = await w.grantRefund(1000n + 500n);
    assertExit(r, w.client, 0);
    assertExit(r, w.proxy, 0);
    const paid = findOut(r, { from: w.proxy, to: w.clientOwner.address, op: OP.payout })[0].value;
    assert.equal(paid, toNano('5') - 1500n * PRICE);
    const st = await w.clientState();
    assert.equal(st.state, STATE.closed);
    assert.equal(st.balance, 0n);
    assert.equal(st.tokensUsed, 1500n);
    // replay of the final message is refused
    assertExit(await w.grantRefund(1500n), w.client, ERR.WRONG_STATE);
});

test('proxy: refuses client requests from a contract that is not the derived client address', async () => {
    const w = await funded();
    // a forged client_proxy_request from the client owner's wallet claiming a refund
    const st = beginCell().storeUint(0, 2).storeCoins(0).storeCoins(0).storeUint(0, 64).storeUint(0, 256).endCell();
    const payload = beginCell().storeUint(OP.client_proxy_refund_granted, 32).storeCoins(toNano('5')).storeAddress(w.clientOwner.address).endCell();
    const forged = body.opQid(OP.client_proxy_request, 1n).storeAddress(w.clientOwner.address).storeRef(st).storeMaybeRef(payload).endCell();
    const before = await balanceOf(w.bc, w.proxy);
    assertExit(await w.send(w.clientOwner.address, w.proxy, toNano('0.2'), forged), w.proxy, ERR.BAD_SENDER);
    assert.equal(await balanceOf(w.bc, w.proxy), before);
    // the getter derives the same address as the tests (= COCOON's runner derivation)
    const got = (await w.bc.runGetMethod(w.proxy, 'get_client_address', [{ type: 'slice', cell: beginCell().storeAddress(w.clientOwner.address).endCell() }])).stackReader.readAddress();
    assert.ok(got.equals(w.client));
});

test('proxy: a refund larger than the client pool is refused (never touches stake/commission)', async () => {
    // pool drained by a worker payout (the same tokens the client used); a refund of 0 still works
    const w = await funded(toNano('1'));
    assertExit(await w.payout(toNano('1') / 20n), w.worker, 0); // 0.75 TON worker part + 0.25 TON commission
    const r = await w.grantRefund(toNano('1') / 20n);          // client balance becomes 0 → refund 0
    assertExit(r, w.client, 0);
    assertExit(r, w.proxy, 0);
    // pool drained while the client still has a balance (proxy signed more than the client paid):
    // the refund must fail on the proxy and bounce, stake and commission untouched
    const w2 = await funded(toNano('2'));
    assertExit(await w2.payout(toNano('2') / 20n), w2.worker, 0); // drains the 2 TON pool
    const r2 = await w2.clientOp(OP.owner_client_withdraw);
    assertExit(r2, w2.client, 0);
    assertExit(r2, w2.proxy, ERR.INSUFFICIENT_FUNDS);
    assert.equal((await w2.proxyState()).stake, toNano('10'), 'stake untouched');
    assert.ok(findOut(r2, { from: w2.proxy, to: w2.client }).some((t) => t.inMessageBounced), 'request bounced back');
});

test('client: unknown op refused, do_not_process and empty body accepted', async () => {
    const w = await funded();
    assertExit(await w.send(w.stranger.address, w.client, toNano('0.1'), body.opQid(0x0badc0de, 1n).endCell()), w.client, ERR.UNKNOWN_OP);
    assertExit(await w.send(w.stranger.address, w.client, toNano('0.1'), body.opQid(OP.do_not_process, 1n).endCell()), w.client, 0);
    assertExit(await w.send(w.stranger.address, w.client, toNano('0.1'), beginCell().endCell()), w.client, 0);
    assert.equal(txTo(await w.charge(5n), w.client).exitCode, 0);
});
