// Compile src/{root,proxy,client,worker}.tolk with @ton/tolk-js into build/<name>.code.boc and
// build/<name>.json {codeBoc64, codeHashHex}. Deterministic.
//   node build.mjs            -> write build/
//   node build.mjs --check    -> compile into a temp dir, fail if it differs from committed build/
import { runTolkCompiler, getTolkCompilerVersion } from '@ton/tolk-js';
import { Cell } from '@ton/core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SRC = path.join(HERE, 'src');
export const CONTRACTS = ['root', 'proxy', 'client', 'worker'];

export async function compileOne(name) {
    const res = await runTolkCompiler({
        entrypointFileName: `${name}.tolk`,
        fsReadCallback: (p) => fs.readFileSync(path.join(SRC, p), 'utf-8'),
        withStackComments: false,
    });
    if (res.status !== 'ok') {
        throw new Error(`tolk: ${name}.tolk failed to compile:\n${res.message}`);
    }
    const cell = Cell.fromBoc(Buffer.from(res.codeBoc64, 'base64'))[0];
    const hashHex = cell.hash().toString('hex');
    if (hashHex !== res.codeHashHex.toLowerCase()) {
        throw new Error(`hash mismatch for ${name}: ${hashHex} vs ${res.codeHashHex}`);
    }
    return { codeBoc64: res.codeBoc64, codeHashHex: hashHex, boc: Buffer.from(res.codeBoc64, 'base64') };
}

async function writeAll(outDir) {
    fs.mkdirSync(outDir, { recursive: true });
    for (const name of CONTRACTS) {
        const r = await compileOne(name);
        fs.writeFileSync(path.join(outDir, `${name}.code.boc`), r.boc);
        fs.writeFileSync(
            path.join(outDir, `${name}.json`),
            JSON.stringify({ codeBoc64: r.codeBoc64, codeHashHex: r.codeHashHex }, null, 2) + '\n',
        );
        console.log(`${name}: ${r.boc.length} bytes, code hash ${r.codeHashHex}`);
    }
}

async function main() {
    const check = process.argv.includes('--check');
    console.log(`Tolk v${await getTolkCompilerVersion()}`);
    if (!check) {
        await writeAll(path.join(HERE, 'build'));
        return;
    }
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cocoon-build-'));
    try {
        await writeAll(tmp);
        let bad = 0;
        for (const name of CONTRACTS) {
            for (const f of [`${name}.code.boc`, `${name}.json`]) {
                const committed = path.join(HERE, 'build', f);
                if (!fs.existsSync(committed) || !fs.readFileSync(committed).equals(fs.readFileSync(path.join(tmp, f)))) {
                    console.error(`check-build: build/${f} differs from a fresh compile (run npm run build)`);
                    bad++;
                }
            }
        }
        if (bad) process.exit(1);
        console.log('check-build: build/ matches a fresh compile');
    } finally {
        fs.rmSync(tmp, { recursive: true, force: true });
    }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
    main().catch((e) => {
        console.error(e.message || e);
        process.exit(1);
    });
}
