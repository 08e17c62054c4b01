//! Operation codes of the contracts (32-bit, big-endian at the start of a body).
//!
//! The values are COCOON-compatible (see docs/cocoon-compat.md); the four root owner
//! operations that only exist in the public contract copy
//! (`add/del_model_type`, `change_params`, `change_owner`) are marked as such. Every
//! constant here is referenced by a typed body in [`crate::messages`] or
//! [`crate::payments`], so a typo shows up as a failing round-trip test.

/// Excess coins returned to `send_excesses_to`.
pub const EXCESSES: u32 = 0x2565_934c;
/// A payout notification to an owner.
pub const PAYOUT: u32 = 0xc59a_7cd3;
/// A body the contracts ignore; the transaction itself is the record (used for `save_state`).
pub const DO_NOT_PROCESS: u32 = 0x9a12_47c0;
/// Inner op of the proxy's `save_state` checkpoint (inside a [`DO_NOT_PROCESS`] body).
pub const PROXY_SAVE_STATE: u32 = 0x5310_9c0f;
/// Cocoon wallet: owner asks the wallet to send a message.
pub const OWNER_WALLET_SEND_MESSAGE: u32 = 0x9c69_f376;

/// Root owner: whitelist a worker image hash.
pub const ROOT_ADD_WORKER_TYPE: u32 = 0xe34b_1c60;
/// Root owner: remove a worker image hash.
pub const ROOT_DEL_WORKER_TYPE: u32 = 0x8d94_a79a;
/// Root owner: whitelist a proxy image hash.
pub const ROOT_ADD_PROXY_TYPE: u32 = 0x7186_0e80;
/// Root owner: remove a proxy image hash.
pub const ROOT_DEL_PROXY_TYPE: u32 = 0x3c41_d0b2;
/// Root owner: whitelist a model hash (public contract copy).
pub const ROOT_ADD_MODEL_TYPE: u32 = 0xc146_134d;
/// Root owner: remove a model hash (public contract copy).
pub const ROOT_DEL_MODEL_TYPE: u32 = 0x92b1_1c18;
/// Root owner: register a proxy endpoint.
pub const ROOT_REGISTER_PROXY: u32 = 0x927c_7cb5;
/// Root owner: unregister a proxy endpoint by seqno.
pub const ROOT_UNREGISTER_PROXY: u32 = 0x6d49_eaf2;
/// Root owner: replace a registered proxy endpoint.
pub const ROOT_UPDATE_PROXY: u32 = 0x9c79_24ba;
/// Root owner: change `price_per_token` and `worker_fee_per_token`.
pub const ROOT_CHANGE_PRICE: u32 = 0xc52e_d8d4;
/// Root owner: change prices, close delays and minimum stakes (public contract copy).
pub const ROOT_CHANGE_PARAMS: u32 = 0x022f_a189;
/// Root owner: change the four price multipliers (our extension; see `contracts/LAYOUTS.md`).
pub const ROOT_CHANGE_MULTIPLIERS: u32 = 0x8b3e_41d7;
/// Root owner: replace the proxy/worker/client codes.
pub const ROOT_UPGRADE_CONTRACTS: u32 = 0xa237_0f61;
/// Root owner: replace the root code.
pub const ROOT_UPGRADE: u32 = 0x11ae_fd51;
/// Root owner: clear all whitelists and registered proxies.
pub const ROOT_RESET: u32 = 0x563c_1d96;
/// Root owner: replace root code and data at once.
pub const ROOT_UPGRADE_FULL: u32 = 0x4f7c_5789;
/// Root owner: transfer ownership (public contract copy).
pub const ROOT_CHANGE_OWNER: u32 = 0xc4a1_ae54;

/// Worker contract -> proxy contract: state notification with an optional payload.
pub const WORKER_PROXY_REQUEST: u32 = 0x4d72_5d2c;
/// Payload of [`WORKER_PROXY_REQUEST`]: payout split.
pub const WORKER_PROXY_PAYOUT_REQUEST: u32 = 0x08e7_d036;

/// Client contract -> proxy contract: state notification with an optional payload.
pub const CLIENT_PROXY_REQUEST: u32 = 0x6544_8ff4;
/// Payload of [`CLIENT_PROXY_REQUEST`]: top-up.
pub const CLIENT_PROXY_TOP_UP: u32 = 0x5cfc_6b87;
/// Payload of [`CLIENT_PROXY_REQUEST`]: registration (carries the nonce).
pub const CLIENT_PROXY_REGISTER: u32 = 0xa35c_b580;
/// Payload of [`CLIENT_PROXY_REQUEST`]: refund granted by the proxy.
pub const CLIENT_PROXY_REFUND_GRANTED: u32 = 0xc68e_bc7b;
/// Payload of [`CLIENT_PROXY_REQUEST`]: forced refund after the close delay.
pub const CLIENT_PROXY_REFUND_FORCE: u32 = 0xf4c3_54c9;

/// Proxy contract: anyone increases the proxy stake.
pub const EXT_PROXY_INCREASE_STAKE: u32 = 0x9713_f187;
/// Proxy contract: withdraw the accumulated commission to the owner.
pub const EXT_PROXY_PAYOUT_REQUEST: u32 = 0x7610_e6eb;
/// Proxy contract: owner starts closing.
pub const OWNER_PROXY_CLOSE: u32 = 0xb51d_5a01;
/// Proxy contract: proxy-signed close request.
pub const EXT_PROXY_CLOSE_REQUEST_SIGNED: u32 = 0x636a_4391;
/// Proxy contract: proxy-signed close completion.
pub const EXT_PROXY_CLOSE_COMPLETE_REQUEST_SIGNED: u32 = 0xe511_abc7;

/// Worker contract: proxy-signed cumulative payout.
pub const EXT_WORKER_PAYOUT_REQUEST_SIGNED: u32 = 0xa040_ad28;
/// Worker contract: proxy-signed final payout (closes the contract).
pub const EXT_WORKER_LAST_PAYOUT_REQUEST_SIGNED: u32 = 0xf5f2_6a36;
/// Worker contract: owner notifies the proxy of its state.
pub const OWNER_WORKER_REGISTER: u32 = 0x26ed_7f65;

/// Client contract: anyone tops up the client balance.
pub const EXT_CLIENT_TOP_UP: u32 = 0xf172_e6c2;
/// Client contract: proxy-signed cumulative charge.
pub const EXT_CLIENT_CHARGE_SIGNED: u32 = 0xbb63_ff93;
/// Client contract: proxy-signed final charge that refunds the rest.
pub const EXT_CLIENT_GRANT_REFUND_SIGNED: u32 = 0xefd7_11e1;
/// Client contract: owner tops up and reopens a closing contract.
pub const OWNER_CLIENT_TOP_UP_REOPEN: u32 = 0x2911_1ceb;
/// Client contract: owner registers with the proxy (nonce from the proxy's `authLong`).
pub const OWNER_CLIENT_REGISTER: u32 = 0xc45f_9f3b;
/// Client contract: owner changes the secret hash.
pub const OWNER_CLIENT_CHANGE_SECRET_HASH: u32 = 0xa935_7034;
/// Client contract: owner changes the secret hash and tops up.
pub const OWNER_CLIENT_CHANGE_SECRET_HASH_AND_TOP_UP: u32 = 0x8473_b408;
/// Client contract: owner requests a refund (starts or finishes closing).
pub const OWNER_CLIENT_REQUEST_REFUND: u32 = 0xfafa_6cc1;
/// Client contract: owner increases the stake.
pub const OWNER_CLIENT_INCREASE_STAKE: u32 = 0x6a1f_6a60;
/// Client contract: owner withdraws `balance - stake`.
pub const OWNER_CLIENT_WITHDRAW: u32 = 0xda06_8e78;

/// Every opcode with its name, for tools that print a body's op.
pub const ALL: &[(&str, u32)] = &[
    ("excesses", EXCESSES),
    ("payout", PAYOUT),
    ("do_not_process", DO_NOT_PROCESS),
    ("proxy_save_state", PROXY_SAVE_STATE),
    ("owner_wallet_send_message", OWNER_WALLET_SEND_MESSAGE),
    ("root_add_worker_type", ROOT_ADD_WORKER_TYPE),
    ("root_del_worker_type", ROOT_DEL_WORKER_TYPE),
    ("root_add_proxy_type", ROOT_ADD_PROXY_TYPE),
    ("root_del_proxy_type", ROOT_DEL_PROXY_TYPE),
    ("root_add_model_type", ROOT_ADD_MODEL_TYPE),
    ("root_del_model_type", ROOT_DEL_MODEL_TYPE),
    ("root_register_proxy", ROOT_REGISTER_PROXY),
    ("root_unregister_proxy", ROOT_UNREGISTER_PROXY),
    ("root_update_proxy", ROOT_UPDATE_PROXY),
    ("root_change_price", ROOT_CHANGE_PRICE),
    ("root_change_params", ROOT_CHANGE_PARAMS),
    ("root_change_multipliers", ROOT_CHANGE_MULTIPLIERS),
    ("root_upgrade_contracts", ROOT_UPGRADE_CONTRACTS),
    ("root_upgrade", ROOT_UPGRADE),
    ("root_reset", ROOT_RESET),
    ("root_upgrade_full", ROOT_UPGRADE_FULL),
    ("root_change_owner", ROOT_CHANGE_OWNER),
    ("worker_proxy_request", WORKER_PROXY_REQUEST),
    ("worker_proxy_payout_request", WORKER_PROXY_PAYOUT_REQUEST),
    ("client_proxy_request", CLIENT_PROXY_REQUEST),
    ("client_proxy_top_up", CLIENT_PROXY_TOP_UP),
    ("client_proxy_register", CLIENT_PROXY_REGISTER),
    ("client_proxy_refund_granted", CLIENT_PROXY_REFUND_GRANTED),
    ("client_proxy_refund_force", CLIENT_PROXY_REFUND_FORCE),
    ("ext_proxy_increase_stake", EXT_PROXY_INCREASE_STAKE),
    ("ext_proxy_payout_request", EXT_PROXY_PAYOUT_REQUEST),
    ("owner_proxy_close", OWNER_PROXY_CLOSE),
    (
        "ext_proxy_close_request_signed",
        EXT_PROXY_CLOSE_REQUEST_SIGNED,
    ),
    (
        "ext_proxy_close_complete_request_signed",
        EXT_PROXY_CLOSE_COMPLETE_REQUEST_SIGNED,
    ),
    (
        "ext_worker_payout_request_signed",
        EXT_WORKER_PAYOUT_REQUEST_SIGNED,
    ),
    (
        "ext_worker_last_payout_request_signed",
        EXT_WORKER_LAST_PAYOUT_REQUEST_SIGNED,
    ),
    ("owner_worker_register", OWNER_WORKER_REGISTER),
    ("ext_client_top_up", EXT_CLIENT_TOP_UP),
    ("ext_client_charge_signed", EXT_CLIENT_CHARGE_SIGNED),
    (
        "ext_client_grant_refund_signed",
        EXT_CLIENT_GRANT_REFUND_SIGNED,
    ),
    ("owner_client_top_up_reopen", OWNER_CLIENT_TOP_UP_REOPEN),
    ("owner_client_register", OWNER_CLIENT_REGISTER),
    (
        "owner_client_change_secret_hash",
        OWNER_CLIENT_CHANGE_SECRET_HASH,
    ),
    (
        "owner_client_change_secret_hash_and_top_up",
        OWNER_CLIENT_CHANGE_SECRET_HASH_AND_TOP_UP,
    ),
    ("owner_client_request_refund", OWNER_CLIENT_REQUEST_REFUND),
    ("owner_client_increase_stake", OWNER_CLIENT_INCREASE_STAKE),
    ("owner_client_withdraw", OWNER_CLIENT_WITHDRAW),
];

/// The name of an opcode, if it is one of ours.
pub fn name(op: u32) -> Option<&'static str> {
    ALL.iter().find(|(_, v)| *v == op).map(|(n, _)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for (n, v) in ALL {
            assert!(seen.insert(*v), "duplicate opcode value for {n}");
        }
        assert_eq!(ALL.len(), 47);
        assert_eq!(name(0xbb63ff93), Some("ext_client_charge_signed"));
        assert_eq!(name(0), None);
    }
}
