// Full lifecycle: every coin injected is accounted for, to the nanoton:
//   Σ injected values = Σ Δbalances(all accounts) + Σ totalFees(all txs) + Σ fwd fees carried by internal messages
// Also checks each party's economic outcome. COCOON_PRINT_FEES=1 prints per-step gas/fees (docs/payments.md).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { toNano } from '@ton/core';
import { makeWorld, assertExit, balanceOf, OP, body, STATE, gasUsed } from './lib.mjs';

const PRICE = 20n;
const FEE = 15n;

test('conservation of value across a full root/proxy/client/worker lifecycle', async () => {
    const w = await makeWorld({ deployChildren: false });
    const accounts = [w.root, w.proxy, w.client, w.worker, w.rootOwner.address, w.proxyOwner.address,
        w.clientOwner.address, w.workerOwner.address, w.stranger.address];
    const balances = async () => Promise.all(accounts.map((a) => balanceOf(w.bc, a)));
    const start = await balances();
    let injected = 0n, fees = 0n, fwd = 0n;
    const steps = [];
    const injectedBy = new Map();
    const run = async (name, value, p, expect = [], from) => {
        injected += value;
        if (from) injectedBy.set(from.toString(), (injectedBy.get(from.toString()) ?? 0n) + value);
        const r = await p;
        let stepFees = 0n, stepGas = 0n;
        for (const t of r.transactions) {
            fees += t.totalFees.coins;
            stepFees += t.totalFees.coins;
            stepGas += gasUsed(t);
            for (const m of t.outMessages.values()) if (m.info.type === 'internal') { fwd += m.info.forwardFee; stepFees += m.info.forwardFee; }
        }
        for (const a of expect) assertExit(r, a, 0);
        steps.push({ name, txs: r.transactions.length, gas: stepGas, fees: stepFees });
        return r;
    };

    const TOKENS1 = 10n ** 8n;        // 2 TON at 20 nanoTON/token
    const TOKENS2 = 15n * 10n ** 7n;  // cumulative
    await run('deploy root', toNano('1'), w.deployRoot(), [w.root], w.rootOwner.address);
    await run('proxy: increase stake 10 TON (deploy)', toNano('10.1'), w.increaseStake(toNano('10')), [w.proxy], w.proxyOwner.address);
    await run('client: top-up 5 TON (deploy)', toNano('5.1'), w.topUp(toNano('5')), [w.client, w.proxy], w.clientOwner.address);
    await run('client: register', toNano('0.2'), w.clientOp(OP.owner_client_register, (b) => b.storeUint(1n, 64)), [w.client], w.clientOwner.address);
    await run('client: charge (signed)', toNano('0.7'), w.charge(TOKENS1), [w.client], w.proxyOwner.address);
    await run('worker: payout (signed, deploy)', toNano('0.7'), w.payout(TOKENS1), [w.worker, w.proxy], w.workerOwner.address);
    await run('worker: register', toNano('0.3'), w.send(w.workerOwner.address, w.worker, toNano('0.3'),
        body.qidAddr(OP.owner_worker_register, 5n, w.workerOwner.address)), [w.worker], w.workerOwner.address);
    await run('proxy: commission withdrawal', toNano('0.2'), w.send(w.proxyOwner.address, w.proxy, toNano('0.2'),
        body.qidAddr(OP.ext_proxy_payout_request, 6n, w.proxyOwner.address)), [w.proxy], w.proxyOwner.address);
    await run('client: withdraw above stake', toNano('0.2'), w.clientOp(OP.owner_client_withdraw), [w.client, w.proxy], w.clientOwner.address);
    await run('client: charge (signed)', toNano('0.7'), w.charge(TOKENS2), [w.client], w.proxyOwner.address);
    await run('client: request refund (closing)', toNano('0.2'), w.requestRefund(), [w.client], w.clientOwner.address);
    w.bc.now += 86400;
    await run('client: request refund (force, after delay)', toNano('0.2'), w.requestRefund(), [w.client, w.proxy], w.clientOwner.address);
    await run('worker: last payout (signed)', toNano('0.7'), w.payout(TOKENS2, { last: true }), [w.worker, w.proxy], w.workerOwner.address);
    await run('proxy: close request (signed)', toNano('1'), w.proxyClose(false), [w.proxy], w.proxyOwner.address);
    w.bc.now += 3600;
    await run('proxy: close complete (signed)', toNano('1'), w.proxyClose(true), [w.proxy], w.proxyOwner.address);

    const end = await balances();
    const delta = end.reduce((s, b, i) => s + b - start[i], 0n);
    assert.equal(injected, delta + fees + fwd, `injected ${injected} != Δbalances ${delta} + fees ${fees} + fwd ${fwd}`);

    // economic outcome
    const c = await w.clientState();
    assert.equal(c.state, STATE.closed);
    assert.equal(c.tokensUsed, TOKENS2);
    const wk = await w.workerState();
    assert.equal(wk.state, STATE.closed);
    const p = await w.proxyState();
    assert.equal(p.state, STATE.closed);
    assert.equal(await balanceOf(w.bc, w.proxy), 0n, 'closed proxy hands everything to its owner');
    // net outcome per party = Δbalance − what it injected (gas excesses come back to the sender)
    const net = (addr) => { const i = accounts.findIndex((a) => a.equals(addr)); return end[i] - start[i] - (injectedBy.get(addr.toString()) ?? 0n); };
    const within = (v, lo, hi, what) => assert.ok(v > lo && v <= hi, `${what}: ${v} not in (${lo}, ${hi}]`);
    // client: paid 5 TON, used TOKENS2*PRICE = 3 TON, got 2 TON back; loses only gas on top
    within(net(w.clientOwner.address), -(TOKENS2 * PRICE) - toNano('0.1'), -(TOKENS2 * PRICE), 'client owner net');
    // worker: earned TOKENS2*FEE = 2.25 TON minus its gas
    within(net(w.workerOwner.address), TOKENS2 * FEE - toNano('0.1'), TOKENS2 * FEE, 'worker owner net');
    // proxy: commission TOKENS2*(PRICE-FEE) = 0.75 TON, stake returned, minus gas (+ the 0.05 TON buffer back)
    within(net(w.proxyOwner.address), TOKENS2 * (PRICE - FEE) - toNano('0.1'), TOKENS2 * (PRICE - FEE) + toNano('0.05'), 'proxy owner net');
    if (process.env.COCOON_PRINT_FEES === '1') {
        console.log('| step | txs | gas (sum) | fees incl. fwd (nanoTON) |');
        console.log('|---|---|---|---|');
        for (const s of steps) console.log(`| ${s.name} | ${s.txs} | ${s.gas} | ${s.fees} |`);
        console.log(`total injected ${injected}, Δbalances ${delta}, fees ${fees}, fwd ${fwd}`);
        console.log('net: client owner', net(w.clientOwner.address), 'worker owner', net(w.workerOwner.address), 'proxy owner', net(w.proxyOwner.address));
    }
});
