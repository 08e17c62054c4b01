//! The KMS over real RA-TLS sessions on loopback, with the root contract on the devnet: an
//! image the root allows for its role gets its keys (bound to role and identity), an image
//! it does not allow gets nothing, a worker image asking for a proxy's keys is refused, a
//! peer without evidence fails the handshake, two KMS instances share the master only after
//! attesting each other (a KMS image outside `kms_image_hashes` gets nothing, and a KMS is
//! not trusted by a peer that does not list its image), and a sealed master cannot be
//! unsealed by another image.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use cocoon_attest::SimKey;
use cocoon_attest::sim::sim_image_hash;
use cocoon_attest::tdx::fake_tdx_image_hash;
use cocoon_kms::{KeyService, Master, MasterSource, PeerKms, RootAllowlist, SealKey, load_master};
use cocoon_ratls::cert::{EvidenceSource, FakeTdxSource, SimSource, Unattested};
use cocoon_ratls::config::CertResolver;
use cocoon_ratls::net::{RatlsAcceptor, RatlsConnector};
use cocoon_ratls::verifier::{RatlsVerifier, VerifierConfig};
use cocoon_service::kms::{
    DEFAULT_TIMEOUT, KeyRequest, KmsError, KmsRole, Purpose, Refusal, Secret, VERSION, fetch,
};
use cocoon_testkit::devnet::{Devnet, devnet};
use cocoon_testkit::identity::identity_from;
use cocoon_ton::HashBytes;
use cocoon_ton::keys::SigningKey;
use cocoon_ton::ops::{RootOp, WalletOps, root_op};
use cocoon_ton::wallet::Wallet;

const OWNER: &str = "0:4444444444444444444444444444444444444444444444444444444444444444";

/// The test-network policy: sim and fake-tdx evidence accepted.
fn verifier() -> Arc<RatlsVerifier> {
    let policy = cocoon_service::identity::peer_policy("sim", true).unwrap();
    RatlsVerifier::new(VerifierConfig::new(policy))
}

fn connector(source: &dyn EvidenceSource) -> RatlsConnector {
    let certs = CertResolver::new(&identity_from(source)).unwrap();
    RatlsConnector::new(certs, verifier(), 16, cocoon_net::Config::default()).unwrap()
}

fn sim() -> SimSource {
    SimSource(SimKey::generate().unwrap())
}

/// The devnet root with the sim image allowed for proxies and fake-tdx's for workers.
async fn network() -> Devnet {
    let net = devnet().await;
    let key = SigningKey::from_file(&net.root.owner_key_path).unwrap();
    let mut ops = WalletOps::new(net.tc.clone(), Wallet::v4r2(key.public_key(), 0), key).unwrap();
    for op in [
        RootOp::AddProxyImage(HashBytes(sim_image_hash())),
        RootOp::AddWorkerImage(HashBytes(fake_tdx_image_hash())),
    ] {
        root_op(&mut ops, &net.root.address, &op, 100_000_000)
            .await
            .unwrap();
    }
    net
}

/// A KMS with `master`, trusting `kms_images` with it, serving on loopback; `source` is its
/// own evidence.
async fn kms(
    net: &Devnet,
    master: Master,
    kms_images: Vec<[u8; 32]>,
    source: &dyn EvidenceSource,
) -> String {
    let allow = RootAllowlist::new(
        net.tc.clone(),
        net.root.address.clone(),
        Duration::from_secs(1),
    );
    let service = Arc::new(KeyService::new(master, allow, kms_images, false));
    let certs = CertResolver::new(&identity_from(source)).unwrap();
    let acceptor = RatlsAcceptor::new(certs, verifier(), 8, cocoon_net::Config::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(service.serve(listener, acceptor));
    addr
}

fn request(role: KmsRole, purposes: &[Purpose]) -> KeyRequest {
    KeyRequest {
        version: VERSION,
        role,
        identity: OWNER.into(),
        purposes: purposes.to_vec(),
        config: None,
    }
}

async fn ask(from: &RatlsConnector, kms: &str, req: &KeyRequest) -> Result<Vec<Secret>, KmsError> {
    fetch(from, kms, &[sim_image_hash()], req, DEFAULT_TIMEOUT).await
}

fn refused(r: Result<Vec<Secret>, KmsError>) -> Refusal {
    match r {
        Err(KmsError::Refused { reason, .. }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_go_only_to_images_the_root_allows_for_the_role_they_claim() {
    let net = network().await;
    let master = Master::from_bytes([7; 32]);
    let kms = kms(&net, master.clone(), vec![sim_image_hash()], &sim()).await;

    // A proxy image (sim, on the root's proxy list) gets its keys: derived from the master
    // over role, identity and purpose; the same on every ask, from any proxy instance.
    let proxy = connector(&sim());
    let all = [Purpose::Signing, Purpose::Wallet, Purpose::Disk];
    let keys = ask(&proxy, &kms, &request(KmsRole::Proxy, &all))
        .await
        .unwrap();
    for (k, p) in keys.iter().zip(all) {
        assert_eq!(*k, master.derive(KmsRole::Proxy, OWNER, p));
    }
    assert_ne!(keys[0], keys[1]);
    let again = ask(
        &connector(&sim()),
        &kms,
        &request(KmsRole::Proxy, &[Purpose::Signing]),
    )
    .await
    .unwrap();
    assert_eq!(again[0], keys[0], "a restarted proxy gets the same key");

    // A worker image (fake-tdx, on the worker list) gets the worker's keys...
    let worker = connector(&FakeTdxSource);
    let wk = ask(&worker, &kms, &request(KmsRole::Worker, &[Purpose::Wallet]))
        .await
        .unwrap();
    assert_eq!(
        wk[0],
        master.derive(KmsRole::Worker, OWNER, Purpose::Wallet)
    );
    assert_ne!(wk[0], keys[1], "roles get different keys");
    // Another instance of the same owner gets keys of its own.
    let mut second = request(KmsRole::Worker, &[Purpose::Wallet]);
    second.identity = format!("{OWNER}/gpu-2");
    let wk2 = ask(&worker, &kms, &second).await.unwrap();
    assert_ne!(wk2[0], wk[0]);
    assert_eq!(
        wk2[0],
        master.derive(KmsRole::Worker, &second.identity, Purpose::Wallet)
    );
    // ...but not the proxy's: its image is not a proxy image.
    assert_eq!(
        refused(ask(&worker, &kms, &request(KmsRole::Proxy, &[Purpose::Signing])).await),
        Refusal::ImageNotAllowed
    );
    // The proxy image is not a worker image either.
    assert_eq!(
        refused(ask(&proxy, &kms, &request(KmsRole::Worker, &[Purpose::Wallet])).await),
        Refusal::ImageNotAllowed
    );
    // Nobody but a KMS gets the master, and a bad request gets nothing.
    assert_eq!(
        refused(ask(&proxy, &kms, &request(KmsRole::Proxy, &[Purpose::Master])).await),
        Refusal::BadRequest
    );
    let mut bad = request(KmsRole::Proxy, &[Purpose::Signing]);
    bad.identity = String::new();
    assert_eq!(refused(ask(&proxy, &kms, &bad).await), Refusal::BadRequest);

    // A peer without evidence fails the handshake (the KMS's alert arrives with TLS 1.3's
    // first read): no request is even read.
    let unattested = connector(&Unattested);
    let e = ask(
        &unattested,
        &kms,
        &request(KmsRole::Proxy, &[Purpose::Signing]),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, KmsError::Connect(_) | KmsError::Io(_)) && e.to_string().contains("alert"),
        "{e}"
    );

    // A client that does not list the KMS's image sends nothing to it.
    let e = fetch(
        &proxy,
        &kms,
        &[[0xAB; 32]],
        &request(KmsRole::Proxy, &[Purpose::Signing]),
        DEFAULT_TIMEOUT,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, KmsError::UntrustedKms(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_the_root_drops_is_refused_after_the_cache_expires() {
    let net = network().await;
    let kms = kms(&net, Master::from_bytes([8; 32]), vec![], &sim()).await;
    let proxy = connector(&sim());
    let req = request(KmsRole::Proxy, &[Purpose::Signing]);
    ask(&proxy, &kms, &req).await.unwrap();
    let key = SigningKey::from_file(&net.root.owner_key_path).unwrap();
    let mut ops = WalletOps::new(net.tc.clone(), Wallet::v4r2(key.public_key(), 0), key).unwrap();
    root_op(
        &mut ops,
        &net.root.address,
        &RootOp::DelProxyImage(HashBytes(sim_image_hash())),
        100_000_000,
    )
    .await
    .unwrap();
    // The allowlist is cached for a second: then the same image is refused.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        refused(ask(&proxy, &kms, &req).await),
        Refusal::ImageNotAllowed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_instances_share_the_master_only_after_attesting_each_other() {
    let net = network().await;
    let master = Master::from_bytes([9; 32]);
    // KMS A trusts sim KMS images with its master.
    let a = kms(&net, master.clone(), vec![sim_image_hash()], &sim()).await;
    let dir = tempfile::tempdir().unwrap();
    let seal = SealKey::sim(b"sim key of B", &sim_image_hash());
    let peer = |connector, kms_images| PeerKms {
        addr: a.clone(),
        connector,
        kms_images,
        patience: Duration::from_secs(2),
    };

    // B, a sim KMS that trusts A's image, gets A's master and seals it to its disk.
    let path = dir.path().join("b.sealed");
    let b = peer(connector(&sim()), vec![sim_image_hash()]);
    let (got, from) = load_master(&path, Some(&seal), Some(&b), false)
        .await
        .unwrap();
    assert_eq!((got, from), (master.clone(), MasterSource::Peer));
    let on_disk = std::fs::read(&path).unwrap();
    assert!(!on_disk.windows(32).any(|w| w == [9; 32]), "never in clear");
    // Restarted, B unseals it without asking anyone.
    let (again, from) = load_master(&path, Some(&seal), None, false).await.unwrap();
    assert_eq!((again, from), (master.clone(), MasterSource::Sealed));

    // A KMS whose image (fake-tdx) A does not trust gets nothing.
    let stranger = peer(connector(&FakeTdxSource), vec![sim_image_hash()]);
    let e = load_master(
        &dir.path().join("c.sealed"),
        Some(&seal),
        Some(&stranger),
        false,
    )
    .await
    .unwrap_err();
    assert!(e.contains("image not allowed"), "{e}");
    assert!(!dir.path().join("c.sealed").exists());

    // A KMS that does not list A's image does not take a master from it.
    let wary = peer(connector(&sim()), vec![fake_tdx_image_hash()]);
    let e = load_master(
        &dir.path().join("d.sealed"),
        Some(&seal),
        Some(&wary),
        false,
    )
    .await
    .unwrap_err();
    assert!(e.contains("not in kms_image_hashes"), "{e}");

    // A peer without evidence does not get past the handshake.
    let bare = peer(connector(&Unattested), vec![sim_image_hash()]);
    assert!(
        load_master(
            &dir.path().join("e.sealed"),
            Some(&seal),
            Some(&bare),
            false
        )
        .await
        .is_err()
    );
}

#[tokio::test]
async fn a_sealed_master_cannot_be_unsealed_by_another_image() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(cocoon_kms::SEALED_MASTER);
    let sim_key = b"the sim key's pkcs8 bytes";
    let ours = SealKey::sim(sim_key, &sim_image_hash());
    // No sealed master, no peer: a new one only when asked for.
    let e = load_master(&path, Some(&ours), None, false)
        .await
        .unwrap_err();
    assert!(e.contains("new_master = true"), "{e}");
    let (master, from) = load_master(&path, Some(&ours), None, true).await.unwrap();
    assert_eq!(from, MasterSource::Generated);
    // The same image unseals it; another image (same machine, same sim key) cannot, and the
    // KMS refuses to start rather than make a new master.
    let (same, _) = load_master(&path, Some(&ours), None, false).await.unwrap();
    assert_eq!(same, master);
    let other = SealKey::sim(sim_key, &fake_tdx_image_hash());
    let e = load_master(&path, Some(&other), None, true)
        .await
        .unwrap_err();
    assert!(e.contains("cannot unseal"), "{e}");
    // Without a sealing key (TDX) nothing is written.
    let none = dir.path().join("none.sealed");
    load_master(&none, None, None, true).await.unwrap();
    assert!(!none.exists());
}

/// On a KMS that requires it, keys go to the identity in the configuration the peer's TEE
/// measured, and to no other: an allowed proxy image cannot ask for another owner's keys,
/// nor show a configuration its evidence does not commit to, nor show none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_bound_to_the_identity_in_the_measured_configuration() {
    use cocoon_attest::measure::rtmr3_for_config;
    use cocoon_attest::sim::sim_image_hash_for;
    const OTHER: &str = "0:5555555555555555555555555555555555555555555555555555555555555555";
    let mine = format!("[proxy]\nowner_address = \"{OWNER}\"\n");
    let theirs = format!("[proxy]\nowner_address = \"{OTHER}\"\n");
    let r3 = rtmr3_for_config(mine.as_bytes());
    let net = network().await;
    // The root allows the measured image (its hash includes the configuration).
    let key = SigningKey::from_file(&net.root.owner_key_path).unwrap();
    let mut ops = WalletOps::new(net.tc.clone(), Wallet::v4r2(key.public_key(), 0), key).unwrap();
    let measured_hash = sim_image_hash_for(Some(&r3));
    root_op(
        &mut ops,
        &net.root.address,
        &RootOp::AddProxyImage(HashBytes(measured_hash)),
        100_000_000,
    )
    .await
    .unwrap();
    let master = Master::from_bytes([9; 32]);
    let allow = RootAllowlist::new(
        net.tc.clone(),
        net.root.address.clone(),
        Duration::from_secs(1),
    );
    let service = Arc::new(KeyService::new(master.clone(), allow, vec![], true));
    let certs = CertResolver::new(&identity_from(&sim())).unwrap();
    let acceptor = RatlsAcceptor::new(certs, verifier(), 8, cocoon_net::Config::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let kms = listener.local_addr().unwrap().to_string();
    tokio::spawn(service.serve(listener, acceptor));

    let measured = connector(&SimSource(SimKey::generate().unwrap().with_rtmr3(Some(r3))));
    let ask_as = |identity: &str, config: Option<&str>| KeyRequest {
        version: VERSION,
        role: KmsRole::Proxy,
        identity: identity.into(),
        purposes: vec![Purpose::Signing],
        config: config.map(str::to_owned),
    };
    let got = ask(&measured, &kms, &ask_as(OWNER, Some(&mine)))
        .await
        .unwrap();
    assert_eq!(
        got[0],
        master.derive(KmsRole::Proxy, OWNER, Purpose::Signing)
    );
    // Another owner's keys, with its own configuration or with the measured one: refused.
    for req in [
        ask_as(OTHER, Some(&mine)),
        ask_as(OTHER, Some(&theirs)),
        ask_as(OWNER, None),
    ] {
        assert_eq!(
            refused(ask(&measured, &kms, &req).await),
            Refusal::IdentityNotMeasured,
            "{:?}",
            req.identity
        );
    }
    // A peer whose evidence commits to no configuration gets nothing here.
    assert_eq!(
        refused(ask(&connector(&sim()), &kms, &ask_as(OWNER, None)).await),
        Refusal::IdentityNotMeasured
    );
}
