// Root contract: registry updates, params changes, versions, owner checks, getters.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { beginCell, toNano } from '@ton/core';
import { makeWorld, assertExit, body, OP, ERR, CODE, proxyEntry, findOut, parseParams, stateOf, balanceOf, paramsCell, DEFAULT_PARAMS } from './lib.mjs';

const H1 = '11'.repeat(32);
const H2 = '22'.repeat(32);

async function world() {
    const w = await makeWorld({ deployChildren: false });
    assertExit(await w.deployRoot(), w.root, 0);
    w.op = (b, from = w.rootOwner.address, value = toNano('0.1')) => w.send(from, w.root, value, b);
    return w;
}

test('root: deploys with the runner-compatible layout and getters', async () => {
    const w = await world();
    const st = await w.rootState();
    assert.ok(st.owner.equals(w.rootOwner.address));
    assert.equal(st.version, 1);
    assert.equal(st.params.structVersion, 3);
    assert.equal(st.params.proxyCode.hash().toString('hex'), CODE.proxy.hash().toString('hex'));
    assert.equal(st.params.workerCode.hash().toString('hex'), CODE.worker.hash().toString('hex'));
    assert.equal(st.params.clientCode.hash().toString('hex'), CODE.client.hash().toString('hex'));
    const r = await w.bc.runGetMethod(w.root, 'get_root_data');
    const s = r.stackReader;
    assert.ok(s.readAddress().equals(w.rootOwner.address));
    assert.equal(s.readNumber(), 1); // version
    assert.equal(s.readNumber(), 1); // params_version
    assert.equal(s.readNumber(), 0); // last proxy seqno
    assert.equal(s.readNumber(), 42); // unique id
    assert.equal(s.readNumber(), -1); // is_test
    assert.equal(s.readNumber(), 3); // struct_version
    const hashes = (await w.bc.runGetMethod(w.root, 'get_code_hashes')).stackReader;
    assert.equal(hashes.readBigNumber(), BigInt('0x' + CODE.proxy.hash().toString('hex')));
    const pc = (await w.bc.runGetMethod(w.root, 'get_params_cell')).stackReader.readCell();
    assert.equal(parseParams(pc).paramsVersion, 1);
    assert.ok(pc.equals(paramsCell(DEFAULT_PARAMS, 7)), 'get_params_cell returns the stored params cell');
});

test('root: add/del worker, model and proxy hashes bump version only', async () => {
    const w = await world();
    const cases = [
        [OP.root_add_worker_type, OP.root_del_worker_type, 'workerHashes', 'worker_hash_is_valid'],
        [OP.root_add_model_type, OP.root_del_model_type, 'modelHashes', 'model_hash_is_valid'],
        [OP.root_add_proxy_type, OP.root_del_proxy_type, 'proxyHashes', 'proxy_hash_is_valid'],
    ];
    let version = 1;
    for (const [add, del, field, getter] of cases) {
        assertExit(await w.op(body.hash(add, w.nextQid(), H1)), w.root, 0);
        assertExit(await w.op(body.hash(add, w.nextQid(), H2)), w.root, 0);
        version += 2;
        let st = await w.rootState();
        assert.deepEqual(st.data[field], [H1, H2]);
        assert.equal(st.version, version);
        assert.equal(st.params.paramsVersion, 1);
        const valid = async (h) => (await w.bc.runGetMethod(w.root, getter, [{ type: 'int', value: BigInt('0x' + h) }])).stackReader.readBoolean();
        assert.equal(await valid(H1), true);
        assertExit(await w.op(body.hash(del, w.nextQid(), H1)), w.root, 0);
        version += 1;
        st = await w.rootState();
        assert.deepEqual(st.data[field], [H2]);
        assert.equal(await valid(H1), false);
        assert.equal(await valid(H2), true);
    }
});

test('root: register / update / unregister proxy address text', async () => {
    const w = await world();
    const reg = (text) => w.op(body.opQid(OP.root_register_proxy, w.nextQid()).storeBuilder(proxyEntry(text)).endCell());
    assertExit(await reg('10.0.0.1:5222'), w.root, 0);
    assertExit(await reg('10.0.0.2:5222 10.0.0.2:5223'), w.root, 0);
    let st = await w.rootState();
    assert.equal(st.data.lastProxySeqno, 2);
    assert.deepEqual(st.data.proxies, [[1, '10.0.0.1:5222'], [2, '10.0.0.2:5222 10.0.0.2:5223']]);
    const entry = (await w.bc.runGetMethod(w.root, 'get_proxy_entry', [{ type: 'int', value: 2n }])).stackReader.readCell();
    assert.ok(entry.equals(proxyEntry('10.0.0.2:5222 10.0.0.2:5223').endCell()));

    const upd = (seqno, text) => w.op(body.opQid(OP.root_update_proxy, w.nextQid()).storeUint(seqno, 32).storeBuilder(proxyEntry(text)).endCell());
    assertExit(await upd(1, '10.0.0.9:6000'), w.root, 0);
    assertExit(await upd(7, '10.0.0.9:6000'), w.root, ERR.UNKNOWN_PROXY);
    const unreg = (seqno) => w.op(body.opQid(OP.root_unregister_proxy, w.nextQid()).storeUint(seqno, 32).endCell());
    assertExit(await unreg(2), w.root, 0);
    assertExit(await unreg(2), w.root, ERR.UNKNOWN_PROXY);
    st = await w.rootState();
    assert.deepEqual(st.data.proxies, [[1, '10.0.0.9:6000']]);
    assert.equal(st.data.lastProxySeqno, 2, 'seqnos are never reused');
    assert.equal(st.version, 1 + 4);

    // malformed entries: type bit 1, length mismatch, empty, trailing ref
    const bad = [
        beginCell().storeUint(1, 1).storeUint(3, 7).storeBuffer(Buffer.from('a:1')),
        beginCell().storeUint(0, 1).storeUint(5, 7).storeBuffer(Buffer.from('a:1')),
        beginCell().storeUint(0, 1).storeUint(0, 7),
        proxyEntry('a:1').storeRef(beginCell().endCell()),
    ];
    for (const e of bad) {
        assertExit(await w.op(body.opQid(OP.root_register_proxy, w.nextQid()).storeBuilder(e).endCell()), w.root, ERR.BAD_PROXY_ADDR);
    }
    assert.equal((await w.rootState()).version, 5);
});

test('root: price, params, multipliers and code upgrades bump params_version', async () => {
    const w = await world();
    assertExit(await w.op(body.opQid(OP.root_change_price, w.nextQid()).storeCoins(30n).storeCoins(20n).endCell()), w.root, 0);
    let st = await w.rootState();
    assert.equal(st.params.pricePerToken, 30n);
    assert.equal(st.params.workerFeePerToken, 20n);
    assert.equal(st.params.paramsVersion, 2);
    assert.equal(st.version, 2);
    // worker fee above price is refused
    assertExit(await w.op(body.opQid(OP.root_change_price, w.nextQid()).storeCoins(10n).storeCoins(11n).endCell()), w.root, ERR.BAD_PRICE);

    assertExit(await w.op(body.opQid(OP.root_change_params, w.nextQid()).storeCoins(40n).storeCoins(25n)
        .storeUint(100, 32).storeUint(200, 32).storeCoins(toNano('3')).storeCoins(toNano('2')).endCell()), w.root, 0);
    st = await w.rootState();
    assert.deepEqual(
        [st.params.pricePerToken, st.params.workerFeePerToken, st.params.proxyDelayBeforeClose, st.params.clientDelayBeforeClose, st.params.minProxyStake, st.params.minClientStake],
        [40n, 25n, 100, 200, toNano('3'), toNano('2')]);
    assert.equal(st.params.paramsVersion, 3);
    const cp = (await w.bc.runGetMethod(w.root, 'get_close_params')).stackReader;
    assert.deepEqual([cp.readNumber(), cp.readNumber(), cp.readBigNumber(), cp.readBigNumber()], [100, 200, toNano('3'), toNano('2')]);

    assertExit(await w.op(body.opQid(OP.root_change_multipliers, w.nextQid()).storeUint(1, 32).storeUint(2, 32).storeUint(3, 32).storeUint(4, 32).endCell()), w.root, 0);
    const pr = (await w.bc.runGetMethod(w.root, 'get_prices')).stackReader;
    assert.deepEqual([pr.readBigNumber(), pr.readBigNumber(), pr.readNumber(), pr.readNumber(), pr.readNumber(), pr.readNumber()], [40n, 25n, 1, 2, 3, 4]);
    st = await w.rootState();
    assert.equal(st.params.paramsVersion, 4);

    const newCode = beginCell().storeUint(0xdead, 16).endCell();
    assertExit(await w.op(body.opQid(OP.root_upgrade_contracts, w.nextQid()).storeRef(newCode).storeRef(CODE.worker).storeRef(CODE.client).endCell()), w.root, 0);
    st = await w.rootState();
    assert.ok(st.params.proxyCode.equals(newCode));
    assert.equal(st.params.paramsVersion, 5);
    assert.equal(st.version, 5);
});

test('root: change owner; old owner and strangers are refused with state unchanged', async () => {
    const w = await world();
    const before = await stateOf(w.bc, w.root);
    const attempts = [
        body.hash(OP.root_add_worker_type, 1n, H1),
        body.opQid(OP.root_change_price, 2n).storeCoins(1n).storeCoins(1n).endCell(),
        body.opQid(OP.root_change_owner, 3n).storeAddress(w.stranger.address).endCell(),
        body.opQid(OP.root_upgrade, 4n).storeRef(beginCell().endCell()).endCell(),
    ];
    for (const b of attempts) assertExit(await w.op(b, w.stranger.address), w.root, ERR.NOT_OWNER);
    assert.ok((await stateOf(w.bc, w.root)).equals(before), 'state unchanged');

    assertExit(await w.op(body.opQid(OP.root_change_owner, w.nextQid()).storeAddress(w.stranger.address).endCell()), w.root, 0);
    assert.ok((await w.rootState()).owner.equals(w.stranger.address));
    assertExit(await w.op(body.hash(OP.root_add_worker_type, w.nextQid(), H1)), w.root, ERR.NOT_OWNER);
    assertExit(await w.op(body.hash(OP.root_add_worker_type, w.nextQid(), H1), w.stranger.address), w.root, 0);
});

test('root: unknown op, reset (not implemented) and do_not_process; excess returned to owner', async () => {
    const w = await world();
    assertExit(await w.op(body.opQid(0x12345678, 1n).endCell()), w.root, ERR.UNKNOWN_OP);
    assertExit(await w.op(body.opQid(OP.root_reset, 1n).endCell()), w.root, ERR.UNKNOWN_OP);
    assertExit(await w.op(body.opQid(OP.do_not_process, 1n).endCell(), w.stranger.address), w.root, 0);
    const bal = await balanceOf(w.bc, w.root);
    const res = await w.op(body.hash(OP.root_add_model_type, 77n, H1), w.rootOwner.address, toNano('5'));
    assertExit(res, w.root, 0);
    const ex = findOut(res, { from: w.root, to: w.rootOwner.address, op: OP.excesses });
    assert.equal(ex.length, 1);
    assert.ok(ex[0].value > toNano('4.9'));
    assert.equal(await balanceOf(w.bc, w.root), bal, 'root keeps exactly its prior balance');
});

test('root: upgrade replaces the root code', async () => {
    const w = await world();
    assertExit(await w.op(body.opQid(OP.root_upgrade, w.nextQid()).storeRef(CODE.worker).endCell()), w.root, 0);
    const c = await w.bc.getContract(w.root);
    assert.ok(c.accountState.state.code.equals(CODE.worker));
});
