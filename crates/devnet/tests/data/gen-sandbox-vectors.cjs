// Regenerates sandbox-wallet-vectors.json: the reference run of a wallet v3r2 scenario in
// @ton/sandbox 0.41.0 (the C++ emulator compiled to WASM, with its default mainnet config).
// The devnet's differential test replays the same message BOCs and compares.
//
//   mkdir -p /tmp/sbx && cd /tmp/sbx && npm init -y && \
//     npm install @ton/sandbox@0.41.0 @ton/core@0.63.1 @ton/crypto@3.3.0 @ton/ton@16.3.0
//   NODE_PATH=/tmp/sbx/node_modules node crates/devnet/tests/data/gen-sandbox-vectors.cjs
const fs = require('fs');
const path = require('path');
const { Blockchain, internal } = require('@ton/sandbox');
const { beginCell, storeMessage, Address, toNano, external, internal: coreInternal, SendMode } = require('@ton/core');
const { keyPairFromSeed } = require('@ton/crypto');
const { WalletContractV3R2 } = require('@ton/ton');

const T0 = 1750000000;
const FAUCET = Address.parse('0:' + 'fa'.repeat(32));
const BOB = Address.parse('0:' + 'b0'.repeat(32));
const CAROL = Address.parse('0:' + 'ca'.repeat(32));

function cellOf(msg) {
  return beginCell().store(storeMessage(msg)).endCell();
}

function txFacts(tx) {
  const d = tx.description;
  const vm = d.computePhase.type === 'vm';
  return {
    account: '0:' + tx.address.toString(16).padStart(64, '0'),
    lt: tx.lt.toString(),
    hash: tx.hash().toString('hex'),
    exit_code: vm ? d.computePhase.exitCode : null,
    gas_used: vm ? Number(d.computePhase.gasUsed) : 0,
    total_fees: tx.totalFees.coins.toString(),
    aborted: d.aborted,
    compute_skipped: !vm,
    action_result_code: d.actionPhase ? d.actionPhase.resultCode : null,
    boc: tx.raw.toBoc().toString('base64'),
  };
}

async function main() {
  const bc = await Blockchain.create();
  bc.now = T0;
  const owner = keyPairFromSeed(Buffer.alloc(32, 0x11));
  const stranger = keyPairFromSeed(Buffer.alloc(32, 0x22));
  const wallet = WalletContractV3R2.create({ workchain: 0, publicKey: owner.publicKey });
  const steps = [];

  async function balances() {
    const out = {};
    for (const [name, a] of [['wallet', wallet.address], ['bob', BOB], ['carol', CAROL]]) {
      out[name] = (await bc.getContract(a)).balance.toString();
    }
    return out;
  }
  async function run(name, kind, cell) {
    let txs = [];
    let rejected = false;
    try {
      const res = await bc.sendMessage(cell);
      txs = res.transactions.map(txFacts);
    } catch (e) {
      rejected = true;
    }
    steps.push({ name, kind, now: bc.now, boc: cell.toBoc().toString('base64'), rejected, txs, balances: await balances() });
  }
  function transfer(seqno, key, to, value, bounce, withInit) {
    const body = wallet.createTransfer({
      seqno, secretKey: key.secretKey, timeout: bc.now + 600,
      sendMode: SendMode.PAY_GAS_SEPARATELY + SendMode.IGNORE_ERRORS,
      messages: [coreInternal({ to, value, bounce })],
    });
    return cellOf(external({ to: wallet.address, init: withInit ? wallet.init : undefined, body }));
  }

  await run('faucet', 'internal', cellOf(internal({ from: FAUCET, to: wallet.address, value: toNano('10'), bounce: false })));
  await run('deploy_and_pay_bob', 'external', transfer(0, owner, BOB, toNano('1'), false, true));
  await run('bounce_from_carol', 'external', transfer(1, owner, CAROL, toNano('0.5'), true, false));
  bc.now = T0 + 30 * 86400;
  await run('after_30_days', 'external', transfer(2, owner, BOB, toNano('0.1'), false, false));
  await run('bad_signature', 'external', transfer(3, stranger, BOB, toNano('0.1'), false, false));
  await run('replayed_seqno', 'external', transfer(2, owner, BOB, toNano('0.1'), false, false));

  const g = await bc.runGetMethod(wallet.address, 'seqno', []);
  const getters = [{ method: 'seqno', exit_code: g.exitCode, gas_used: Number(g.gasUsed), stack: g.stack.map((s) => s.value.toString()) }];

  const out = {
    generator: 'gen-sandbox-vectors.cjs with @ton/sandbox 0.41.0, @ton/core 0.63.1, @ton/ton 16.3.0',
    wallet_code_boc: wallet.init.code.toBoc().toString('base64'),
    wallet_address: wallet.address.toRawString(),
    public_key_hex: owner.publicKey.toString('hex'),
    steps,
    getters,
  };
  fs.writeFileSync(path.join(__dirname, 'sandbox-wallet-vectors.json'), JSON.stringify(out, null, 2) + '\n');
  console.log(JSON.stringify(steps.map((s) => [s.name, s.rejected, s.txs.map((t) => [t.exit_code, t.gas_used, t.total_fees, t.aborted])])));
}
main().catch((e) => { console.error(e); process.exit(1); });
