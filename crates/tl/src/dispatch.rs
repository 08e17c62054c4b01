//! Typed errors of dispatch: decoding one message of a set (`messages::*`), a function
//! enum (`functions::<ns>::Any`) or a boxed type (`enums::*`) from a whole frame payload.
//!
//! A session tells apart a peer that sent something it does not handle (an unknown id: a
//! newer peer, usually ignored for messages) from one that sent a handled constructor it
//! cannot decode (a protocol violation).

/// Why `decode` of a dispatch enum failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchError {
    /// Fewer than the four bytes of a constructor id.
    #[error("{len} bytes, shorter than a constructor id")]
    TooShort {
        /// Input length.
        len: usize,
    },
    /// A constructor id outside the set (`expected` names the set or type).
    #[error("unknown constructor id {id:08x} for {expected}")]
    Unknown {
        /// The id found.
        id: u32,
        /// The set or type expected.
        expected: &'static str,
    },
    /// A member of the set whose body does not decode; `error` is what the member's own
    /// `TlRead::from_bytes` says.
    #[error("malformed {name}: {error}")]
    Malformed {
        /// The member's constructor id.
        id: u32,
        /// Full TL name of the member, e.g. `client.runQueryEx`.
        name: &'static str,
        /// The member's decoding error.
        error: crate::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::functions::{client as fclient, proxy as fproxy, worker as fworker};
    use crate::messages::{client as mclient, proxy as mproxy};
    use crate::types::{client as tclient, proxy as tproxy};
    use crate::{Identifiable, TlRead, TlWrite, schema};

    #[test]
    fn members_decode_to_their_variant() {
        let q = fclient::RunQueryEx {
            model_name: "m".into(),
            request_id: [7; 32],
            enable_debug: Some(true),
            ..Default::default()
        };
        let got = mclient::ToProxy::decode(&q.to_bytes()).unwrap();
        assert_eq!(got, mclient::ToProxy::RunQueryEx(q.clone()));
        assert_eq!(got.constructor_id(), fclient::RunQueryEx::CONSTRUCTOR_ID);
        assert_eq!(got.constructor_name(), "client.runQueryEx");
        assert_eq!(got.to_bytes(), q.to_bytes());

        // A type (not a function) in a set.
        let c = tclient::CancelQuery {
            request_id: [1; 32],
            reason: "gone".into(),
        };
        assert_eq!(
            mclient::ToProxy::decode(&c.to_bytes()).unwrap(),
            mclient::ToProxy::CancelQuery(c)
        );
        // Both constructors of a boxed type.
        let empty = tproxy::SignedPaymentEmpty {}.to_bytes();
        assert!(matches!(
            mproxy::ToWorker::decode(&empty),
            Ok(mproxy::ToWorker::SignedPaymentEmpty(_))
        ));
    }

    #[test]
    fn an_id_outside_the_set_is_unknown() {
        // A function of the client namespace that the proxy serves not as a message.
        let q = fclient::GetWorkerTypes {}.to_bytes();
        assert_eq!(
            mclient::ToProxy::decode(&q),
            Err(DispatchError::Unknown {
                id: fclient::GetWorkerTypes::CONSTRUCTOR_ID,
                expected: "client.ToProxy",
            })
        );
        // A message is not a query.
        let m = fclient::RunQueryEx::default().to_bytes();
        assert!(matches!(
            mclient::ToProxyQuery::decode(&m),
            Err(DispatchError::Unknown { .. })
        ));
        let e = mclient::ToProxy::decode(&[0xff; 8]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown constructor id ffffffff for client.ToProxy"
        );
    }

    #[test]
    fn short_input_is_too_short() {
        assert_eq!(
            mclient::ToProxy::decode(&[1, 2, 3]),
            Err(DispatchError::TooShort { len: 3 })
        );
        assert_eq!(
            fworker::Any::decode(&[]),
            Err(DispatchError::TooShort { len: 0 })
        );
    }

    #[test]
    fn malformed_members_carry_the_members_own_error() {
        let mut bytes = fclient::RunQueryEx::default().to_bytes();
        bytes.truncate(bytes.len() - 2);
        let own = fclient::RunQueryEx::from_bytes(&bytes).unwrap_err();
        assert_eq!(
            mclient::ToProxy::decode(&bytes),
            Err(DispatchError::Malformed {
                id: fclient::RunQueryEx::CONSTRUCTOR_ID,
                name: "client.runQueryEx",
                error: own.clone(),
            })
        );
        // Trailing bytes are malformed too, also for a constructor without fields.
        let mut bytes = fclient::AuthorizeWithProxyLong {}.to_bytes();
        bytes.extend_from_slice(&[0; 4]);
        let e = mclient::ToProxyQuery::decode(&bytes).unwrap_err();
        let own = fclient::AuthorizeWithProxyLong::from_bytes(&bytes).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("malformed client.authorizeWithProxyLong: {own}")
        );
        assert!(matches!(e, DispatchError::Malformed { .. }));
    }

    #[test]
    fn function_enums_and_boxed_types_decode_too() {
        let q = fworker::UpdatePaymentStatus {};
        assert_eq!(
            fworker::Any::decode(&q.to_bytes()),
            Ok(fworker::Any::UpdatePaymentStatus(q))
        );
        let q = fproxy::RunQuery::default();
        assert!(matches!(
            fworker::Any::decode(&q.to_bytes()),
            Err(DispatchError::Unknown {
                expected: "worker function",
                ..
            })
        ));
        let sp = tproxy::SignedPayment { data: vec![1, 2] };
        assert_eq!(
            crate::enums::proxy::SignedPayment::decode(&sp.to_bytes()),
            Ok(crate::enums::proxy::SignedPayment::SignedPayment(sp))
        );
    }

    #[test]
    fn message_set_file_syntax() {
        let sets = schema::parse_message_sets(
            "// comment\na.B = a.x a.y; // trailing\nc.D =\n  c.z\n  ;\n",
        )
        .unwrap();
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[0].name, "a.B");
        assert_eq!(sets[0].namespace(), "a");
        assert_eq!(sets[0].short_name(), "B");
        assert_eq!(sets[0].members, ["a.x", "a.y"]);
        assert_eq!(sets[1].members, ["c.z"]);
        for bad in [
            "a.B = a.x",
            "a.B a.x;",
            "B = a.x;",
            "a.b = a.x;",
            "a.B = ;",
            "a.B = a.x a.x;",
            "a.B = a.x; a.B = a.y;",
        ] {
            assert!(schema::parse_message_sets(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_set_member_is_declared_and_sets_are_distinct() {
        let decls = schema::cocoon_schema().unwrap();
        let sets = schema::message_sets().unwrap();
        assert!(!sets.is_empty());
        for set in &sets {
            for m in &set.members {
                assert!(decls.iter().any(|d| &d.name == m), "{}: {m}", set.name);
            }
        }
    }
}
