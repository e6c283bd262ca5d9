//! Session admission as a pure decision: given a session token, what the admitting side has
//! seen and revoked, and the time, is the session admitted, and if not, why.
//!
//! The relay and the agent both admit sessions: the relay when a client opens one, the agent
//! when the relay opens it on the device's tunnel. Both run the same rules, in this order:
//!
//! 1. the token verifies (signature, lifetime and, at the agent, the device) —
//!    [`SessionVerifier::verify`];
//! 2. at the relay, access of the token's subject to the device was not revoked after the token
//!    was issued, and the credential the token was granted through (an API key) was not
//!    revoked — [`RevocationList`];
//! 3. at the relay, the token was issued after the relay started
//!    ([`AdmissionState::not_before`]): the relay's seen-set is lost when it restarts, so a
//!    token from before then may have been used already;
//! 4. the session id was not used before — [`ReplayGuard`] (a set of seen ids that forgets each
//!    one when its token expires, since an expired token is refused anyway).
//!
//! Nothing here does I/O or reads the clock: the caller passes the time in, as Unix seconds.
//! A refusal carries a [`RefusalCode`], whose [`RefusalCode::as_str`] is the code sent on the
//! wire in `Control::Refused` and reported to the control plane.

use std::collections::HashMap;

use crate::ids::{DeviceId, SessionId};
use crate::token::{
    CLOCK_LEEWAY_SECS, Credential, MAX_LIFETIME_SECS, SessionClaims, SessionVerifier, TokenError,
};

/// Why a session, a channel or a link was refused: the stable codes of `Control::Refused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalCode {
    /// The token is not of the token's shape, or too long.
    TokenMalformed,
    /// The token's signature does not match.
    TokenInvalid,
    /// The token expired.
    TokenExpired,
    /// The token was issued in the future, or lives longer than allowed.
    TokenNotYetValid,
    /// The token is for another device.
    TokenWrongDevice,
    /// The token's session id was used before.
    TokenReplayed,
    /// Access of the token's subject to the device was revoked after the token was issued.
    AccessRevoked,
    /// The credential (API key) the token was granted through was revoked.
    CredentialRevoked,
    /// The token was issued before the relay started (it may have been used already).
    TokenPredatesRelay,
    /// The device's tunnel is not connected to any relay.
    DeviceOffline,
    /// The device's tunnel is known but the device did not answer.
    DeviceUnreachable,
    /// The peer broke the protocol (an unexpected message).
    Protocol,
    /// A device key or relay secret was refused.
    Unauthenticated,
    /// The channel names a session the device does not have.
    NoSession,
    /// The session's token does not allow this channel.
    NotAllowed,
    /// What the channel needs is not on the device (no Docker socket, no such serial port,
    /// unit or container); the message names it.
    Unavailable,
}

impl RefusalCode {
    /// Every code, for tables and tests.
    pub const ALL: [RefusalCode; 16] = [
        RefusalCode::TokenMalformed,
        RefusalCode::TokenInvalid,
        RefusalCode::TokenExpired,
        RefusalCode::TokenNotYetValid,
        RefusalCode::TokenWrongDevice,
        RefusalCode::TokenReplayed,
        RefusalCode::AccessRevoked,
        RefusalCode::CredentialRevoked,
        RefusalCode::TokenPredatesRelay,
        RefusalCode::DeviceOffline,
        RefusalCode::DeviceUnreachable,
        RefusalCode::Protocol,
        RefusalCode::Unauthenticated,
        RefusalCode::NoSession,
        RefusalCode::NotAllowed,
        RefusalCode::Unavailable,
    ];

    /// The code as sent on the wire (snake_case; peers and reports depend on these strings).
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::TokenMalformed => "token_malformed",
            RefusalCode::TokenInvalid => "token_invalid",
            RefusalCode::TokenExpired => "token_expired",
            RefusalCode::TokenNotYetValid => "token_not_yet_valid",
            RefusalCode::TokenWrongDevice => "token_wrong_device",
            RefusalCode::TokenReplayed => "token_replayed",
            RefusalCode::AccessRevoked => "access_revoked",
            RefusalCode::CredentialRevoked => "credential_revoked",
            RefusalCode::TokenPredatesRelay => "token_predates_relay",
            RefusalCode::DeviceOffline => "device_offline",
            RefusalCode::DeviceUnreachable => "device_unreachable",
            RefusalCode::Protocol => "protocol",
            RefusalCode::Unauthenticated => "unauthenticated",
            RefusalCode::NoSession => "no_session",
            RefusalCode::NotAllowed => "not_allowed",
            RefusalCode::Unavailable => "unavailable",
        }
    }
}

impl std::fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&TokenError> for RefusalCode {
    fn from(e: &TokenError) -> Self {
        match e {
            TokenError::Malformed => RefusalCode::TokenMalformed,
            TokenError::BadSignature => RefusalCode::TokenInvalid,
            TokenError::Expired => RefusalCode::TokenExpired,
            TokenError::NotYetValid => RefusalCode::TokenNotYetValid,
            TokenError::WrongDevice => RefusalCode::TokenWrongDevice,
        }
    }
}

/// A refused session: the code, the sentence for people, and what is known of the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The stable code.
    pub code: RefusalCode,
    /// Why, in words.
    pub reason: String,
    /// The session, when the token could be read.
    pub session: Option<SessionId>,
    /// The device, when the token could be read.
    pub device: Option<DeviceId>,
}

impl Refusal {
    /// A refusal of the session `claims` grant.
    pub fn of_session(
        claims: &SessionClaims,
        code: RefusalCode,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            code,
            reason: reason.into(),
            session: Some(claims.sid),
            device: Some(claims.dev.clone()),
        }
    }

    /// The device of `claims` is connected to no relay.
    pub fn device_offline(claims: &SessionClaims) -> Self {
        let reason = format!("device {} is offline", claims.dev);
        Self::of_session(claims, RefusalCode::DeviceOffline, reason)
    }

    /// The device of `claims` did not answer.
    pub fn device_unreachable(claims: &SessionClaims) -> Self {
        Self::of_session(
            claims,
            RefusalCode::DeviceUnreachable,
            DEVICE_UNREACHABLE_REASON,
        )
    }
}

impl From<TokenError> for Refusal {
    fn from(e: TokenError) -> Self {
        Self {
            code: RefusalCode::from(&e),
            reason: e.to_string(),
            session: None,
            device: None,
        }
    }
}

/// The reason given with [`RefusalCode::DeviceUnreachable`].
pub const DEVICE_UNREACHABLE_REASON: &str = "the device did not answer";

/// The reason given with [`RefusalCode::CredentialRevoked`], and when a live session ends
/// because its credential was revoked.
pub const CREDENTIAL_REVOKED_REASON: &str =
    "the API key this session was granted through was revoked";

/// The reason given with [`RefusalCode::TokenPredatesRelay`].
pub const TOKEN_PREDATES_RELAY_REASON: &str = "the relay restarted after this session was granted; ask for a new session (run the command again)";

/// Session ids already used, each kept until its token expires (replay protection).
#[derive(Debug, Clone, Default)]
pub struct ReplayGuard {
    seen: HashMap<SessionId, i64>,
}

impl ReplayGuard {
    /// Marks `claims`' session id used at `now`; false if it was used before (a replay). Ids
    /// whose tokens expired by `now` are forgotten first.
    pub fn first_use(&mut self, claims: &SessionClaims, now: i64) -> bool {
        self.seen.retain(|_, exp| *exp > now);
        self.seen.insert(claims.sid, claims.exp).is_none()
    }

    /// How many session ids are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no session id is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// (device, subject) pairs whose access was revoked, with when: tokens issued up to then are
/// refused; and revoked credentials: every token granted through one is refused.
#[derive(Debug, Clone, Default)]
pub struct RevocationList {
    entries: Vec<(DeviceId, String, i64)>,
    credentials: Vec<(Credential, i64)>,
}

impl RevocationList {
    /// Refuses tokens issued up to `now` for `subject` on `device`. Entries older than a
    /// token's longest lifetime protect nothing and are dropped.
    pub fn revoke(&mut self, device: &DeviceId, subject: &str, now: i64) {
        self.entries
            .retain(|(_, _, at)| *at > now - MAX_LIFETIME_SECS);
        self.entries.push((device.clone(), subject.to_owned(), now));
    }

    /// Whether the token of `claims` was issued before its subject's access to its device was
    /// revoked.
    pub fn is_revoked(&self, claims: &SessionClaims) -> bool {
        self.entries
            .iter()
            .any(|(d, sub, at)| *d == claims.dev && *sub == claims.sub && claims.iat <= *at)
    }

    /// Refuses every token granted through `credential` (revoked at `now`). A revoked
    /// credential is never granted another token, so the entry is kept only as long as a token
    /// granted before `now` can live, with the clock leeway: then it protects nothing.
    pub fn revoke_credential(&mut self, credential: Credential, now: i64) {
        let horizon = MAX_LIFETIME_SECS + CLOCK_LEEWAY_SECS;
        self.credentials.retain(|(_, at)| *at > now - horizon);
        if !self.is_credential_revoked(&credential) {
            self.credentials.push((credential, now));
        }
    }

    /// Whether `credential` was revoked (recently enough to matter).
    pub fn is_credential_revoked(&self, credential: &Credential) -> bool {
        self.credentials.iter().any(|(c, _)| c == credential)
    }
}

/// What an admitting side remembers between sessions.
#[derive(Debug, Clone, Default)]
pub struct AdmissionState {
    /// Session ids already used.
    pub replay: ReplayGuard,
    /// Revoked accesses (empty at the agent, which learns of revocations from its relay).
    pub revoked: RevocationList,
    /// Tokens issued before this (Unix seconds) are refused: the relay's start, since what it
    /// had seen before is gone (0 at the agent, whose seen-set lives as long as its process).
    pub not_before: i64,
}

impl AdmissionState {
    /// The state of a relay that started at `start` (Unix seconds): nothing seen or revoked,
    /// and tokens issued before `start` refused.
    pub fn since(start: i64) -> Self {
        Self {
            not_before: start,
            ..Self::default()
        }
    }
}

/// Decides whether the session `token` asks for is admitted at `now` (Unix seconds).
///
/// `device` is the device doing the admitting (the agent: a token for another device is
/// refused), or None (the relay). On admission the session id is marked used in `state`; a
/// refused token leaves `state` as it was.
pub fn admit(
    verifier: &SessionVerifier,
    state: &mut AdmissionState,
    token: &str,
    device: Option<&DeviceId>,
    now: i64,
) -> Result<SessionClaims, Refusal> {
    let claims = verifier.verify(token, now, device)?;
    if state.revoked.is_revoked(&claims) {
        return Err(Refusal::of_session(
            &claims,
            RefusalCode::AccessRevoked,
            "access to this device was revoked",
        ));
    }
    if let Some(credential) = &claims.cred
        && state.revoked.is_credential_revoked(credential)
    {
        return Err(Refusal::of_session(
            &claims,
            RefusalCode::CredentialRevoked,
            CREDENTIAL_REVOKED_REASON,
        ));
    }
    if claims.iat < state.not_before {
        return Err(Refusal::of_session(
            &claims,
            RefusalCode::TokenPredatesRelay,
            TOKEN_PREDATES_RELAY_REASON,
        ));
    }
    if !state.replay.first_use(&claims, now) {
        return Err(Refusal::of_session(
            &claims,
            RefusalCode::TokenReplayed,
            "session token was already used",
        ));
    }
    Ok(claims)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::ids::KeyId;
    use crate::token::{Operation, SessionSigner};

    const NOW: i64 = 10_000;

    fn device(n: u8) -> DeviceId {
        format!("device-000{n}").parse().unwrap()
    }

    fn claims(iat: i64) -> SessionClaims {
        SessionClaims {
            sid: SessionId::new(),
            sub: "user:a@example.com".into(),
            dev: device(1),
            op: Operation::Shell,
            args: serde_json::Value::Null,
            iat,
            exp: iat + 60,
            cred: Some(Credential::ApiKey(KeyId::from_uuid(uuid::Uuid::from_u128(
                7,
            )))),
            rec: false,
        }
    }

    /// What is known before the decision.
    #[derive(Clone, Copy, Debug)]
    enum Given {
        Nothing,
        /// The same token was admitted once already.
        UsedBefore,
        /// The subject's access to the device was revoked at this time.
        RevokedAt(i64),
        /// Another subject's access to the device was revoked.
        OtherSubjectRevoked,
        /// The subject's access to another device was revoked.
        OtherDeviceRevoked,
        /// The token's credential was revoked at this time.
        CredentialRevokedAt(i64),
        /// Another credential of the same subject was revoked.
        OtherCredentialRevoked,
        /// The admitting relay started at this time.
        StartedAt(i64),
    }

    /// How the token is made.
    #[derive(Clone, Copy, Debug)]
    enum Token {
        Good,
        ForDevice2,
        OtherKey,
        Garbage,
        IssuedAt(i64),
        LivingLong,
        /// Granted without a credential (an OIDC sign-in).
        NoCredential,
    }

    #[test]
    fn admission_table() {
        let (signer, _) = SessionSigner::generate().unwrap();
        let (other, _) = SessionSigner::generate().unwrap();
        let verifier = signer.verifier();
        let d1 = device(1);
        use RefusalCode::*;
        // (token, given, admitting device, now, refusal expected)
        type Row<'a> = (Token, Given, Option<&'a DeviceId>, i64, Option<RefusalCode>);
        let table: &[Row] = &[
            (Token::Good, Given::Nothing, None, NOW, None),
            (Token::Good, Given::Nothing, Some(&d1), NOW, None),
            (
                Token::Good,
                Given::UsedBefore,
                None,
                NOW,
                Some(TokenReplayed),
            ),
            (
                Token::Good,
                Given::UsedBefore,
                Some(&d1),
                NOW + 30,
                Some(TokenReplayed),
            ),
            (
                Token::Good,
                Given::Nothing,
                None,
                NOW + 60,
                Some(TokenExpired),
            ),
            (
                Token::Good,
                Given::UsedBefore,
                None,
                NOW + 60,
                Some(TokenExpired),
            ),
            (
                Token::ForDevice2,
                Given::Nothing,
                Some(&d1),
                NOW,
                Some(TokenWrongDevice),
            ),
            (Token::ForDevice2, Given::Nothing, None, NOW, None),
            (
                Token::OtherKey,
                Given::Nothing,
                None,
                NOW,
                Some(TokenInvalid),
            ),
            (
                Token::Garbage,
                Given::Nothing,
                None,
                NOW,
                Some(TokenMalformed),
            ),
            (
                Token::IssuedAt(NOW + 31),
                Given::Nothing,
                None,
                NOW,
                Some(TokenNotYetValid),
            ),
            (Token::IssuedAt(NOW + 30), Given::Nothing, None, NOW, None),
            (
                Token::LivingLong,
                Given::Nothing,
                None,
                NOW,
                Some(TokenNotYetValid),
            ),
            (
                Token::Good,
                Given::RevokedAt(NOW),
                None,
                NOW,
                Some(AccessRevoked),
            ),
            (Token::Good, Given::RevokedAt(NOW - 1), None, NOW, None),
            (Token::Good, Given::OtherSubjectRevoked, None, NOW, None),
            (Token::Good, Given::OtherDeviceRevoked, None, NOW, None),
            // A revoked credential refuses its tokens whenever they were issued, before or
            // after the revocation (the clocks of control plane and relay may differ).
            (
                Token::Good,
                Given::CredentialRevokedAt(NOW - 5),
                None,
                NOW,
                Some(CredentialRevoked),
            ),
            (
                Token::Good,
                Given::CredentialRevokedAt(NOW + 5),
                None,
                NOW + 10,
                Some(CredentialRevoked),
            ),
            (Token::Good, Given::OtherCredentialRevoked, None, NOW, None),
            (
                Token::NoCredential,
                Given::OtherCredentialRevoked,
                None,
                NOW,
                None,
            ),
            // A relay refuses tokens issued before it started, admits those issued since.
            (
                Token::Good,
                Given::StartedAt(NOW + 1),
                None,
                NOW + 2,
                Some(TokenPredatesRelay),
            ),
            (Token::Good, Given::StartedAt(NOW), None, NOW + 2, None),
            (
                Token::IssuedAt(NOW - 1),
                Given::StartedAt(NOW),
                None,
                NOW,
                Some(TokenPredatesRelay),
            ),
            // A bad token is refused for what it is, whatever was revoked or used.
            (
                Token::OtherKey,
                Given::RevokedAt(NOW),
                None,
                NOW,
                Some(TokenInvalid),
            ),
        ];
        for (i, &(token, given, at, now, want)) in table.iter().enumerate() {
            let mut c = claims(NOW);
            let token = match token {
                Token::Good => signer.sign(&c),
                Token::ForDevice2 => {
                    c.dev = device(2);
                    signer.sign(&c)
                }
                Token::OtherKey => other.sign(&c),
                Token::Garbage => "garbage".to_owned(),
                Token::IssuedAt(iat) => {
                    c = claims(iat);
                    signer.sign(&c)
                }
                Token::LivingLong => {
                    c.exp = NOW + 3600;
                    signer.sign(&c)
                }
                Token::NoCredential => {
                    c.cred = None;
                    signer.sign(&c)
                }
            };
            let mut state = AdmissionState::default();
            match given {
                Given::Nothing => {}
                Given::UsedBefore => assert!(state.replay.first_use(&c, NOW)),
                Given::RevokedAt(t) => state.revoked.revoke(&c.dev, &c.sub, t),
                Given::OtherSubjectRevoked => {
                    state.revoked.revoke(&c.dev, "user:b@example.com", NOW)
                }
                Given::OtherDeviceRevoked => state.revoked.revoke(&device(3), &c.sub, NOW),
                Given::CredentialRevokedAt(t) => {
                    state.revoked.revoke_credential(c.cred.unwrap(), t)
                }
                Given::OtherCredentialRevoked => state
                    .revoked
                    .revoke_credential(Credential::ApiKey(KeyId::new()), NOW),
                Given::StartedAt(t) => state.not_before = t,
            }
            let before = state.replay.len();
            let got = admit(&verifier, &mut state, &token, at, now);
            match (want, got) {
                (None, Ok(admitted)) => {
                    assert_eq!(admitted, c, "case {i}");
                    assert_eq!(state.replay.len(), before + 1, "case {i}: marked used");
                }
                (Some(code), Err(refusal)) => {
                    assert_eq!(refusal.code, code, "case {i}");
                    assert_eq!(
                        state.replay.len(),
                        before,
                        "case {i}: a refusal marks nothing"
                    );
                }
                (want, got) => panic!("case {i}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn refusals_say_who_and_why() {
        let (signer, _) = SessionSigner::generate().unwrap();
        let mut state = AdmissionState::default();
        let c = claims(NOW);
        let token = signer.sign(&c);
        admit(&signer.verifier(), &mut state, &token, None, NOW).unwrap();
        let replay = admit(&signer.verifier(), &mut state, &token, None, NOW).unwrap_err();
        assert_eq!(
            replay,
            Refusal::of_session(
                &c,
                RefusalCode::TokenReplayed,
                "session token was already used"
            )
        );
        state.revoked.revoke(&c.dev, &c.sub, NOW);
        let c2 = claims(NOW);
        let revoked =
            admit(&signer.verifier(), &mut state, &signer.sign(&c2), None, NOW).unwrap_err();
        assert_eq!(revoked.reason, "access to this device was revoked");
        assert_eq!(
            (revoked.session, revoked.device),
            (Some(c2.sid), Some(c2.dev.clone()))
        );
        let bad = admit(&signer.verifier(), &mut state, "x.y", None, NOW).unwrap_err();
        assert_eq!((bad.session, bad.device), (None, None));
        assert_eq!(bad.reason, TokenError::Malformed.to_string());
        let offline = Refusal::device_offline(&c);
        assert_eq!(offline.reason, "device device-0001 is offline");
        assert_eq!(
            Refusal::device_unreachable(&c).reason,
            "the device did not answer"
        );
    }

    #[test]
    fn the_replay_guard_forgets_expired_ids() {
        let mut guard = ReplayGuard::default();
        let c = claims(NOW);
        assert!(guard.first_use(&c, NOW));
        assert!(!guard.first_use(&c, NOW + 59));
        assert!(guard.first_use(&claims(NOW + 60), NOW + 60));
        assert_eq!(guard.len(), 1, "the expired id was forgotten");
    }

    #[test]
    fn old_revocations_are_dropped() {
        let mut list = RevocationList::default();
        let c = claims(NOW - 100);
        list.revoke(&c.dev, &c.sub, NOW - 100);
        assert!(list.is_revoked(&c));
        list.revoke(&device(3), &c.sub, NOW);
        assert!(
            !list.is_revoked(&c),
            "older than a token's lifetime: dropped"
        );
    }

    #[test]
    fn codes_are_the_wire_strings() {
        let wire: Vec<&str> = RefusalCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            wire,
            [
                "token_malformed",
                "token_invalid",
                "token_expired",
                "token_not_yet_valid",
                "token_wrong_device",
                "token_replayed",
                "access_revoked",
                "credential_revoked",
                "token_predates_relay",
                "device_offline",
                "device_unreachable",
                "protocol",
                "unauthenticated",
                "no_session",
                "not_allowed",
                "unavailable",
            ]
        );
        for e in [
            TokenError::Malformed,
            TokenError::BadSignature,
            TokenError::Expired,
            TokenError::NotYetValid,
            TokenError::WrongDevice,
        ] {
            assert_eq!(RefusalCode::from(&e).as_str(), e.code());
        }
    }

    #[test]
    fn revoked_credentials_are_kept_as_long_as_their_tokens_live() {
        let mut list = RevocationList::default();
        let c = claims(NOW);
        let key = c.cred.unwrap();
        list.revoke_credential(key, NOW);
        list.revoke_credential(key, NOW + 1);
        assert!(list.is_credential_revoked(&key));
        list.revoke_credential(Credential::ApiKey(KeyId::new()), NOW + 89);
        assert!(
            list.is_credential_revoked(&key),
            "still within a token's life and leeway"
        );
        list.revoke_credential(Credential::ApiKey(KeyId::new()), NOW + 90);
        assert!(
            !list.is_credential_revoked(&key),
            "no token of it can live now"
        );
    }

    #[test]
    fn a_relay_refuses_tokens_from_before_its_start_and_says_why() {
        let (signer, _) = SessionSigner::generate().unwrap();
        let c = claims(NOW);
        let token = signer.sign(&c);
        let mut before = AdmissionState::since(NOW);
        admit(&signer.verifier(), &mut before, &token, None, NOW).unwrap();
        // The relay restarts: a new state, started after the token was issued.
        let mut after = AdmissionState::since(NOW + 3);
        let refusal = admit(&signer.verifier(), &mut after, &token, None, NOW + 4).unwrap_err();
        assert_eq!(refusal.code, RefusalCode::TokenPredatesRelay);
        assert_eq!(refusal.reason, TOKEN_PREDATES_RELAY_REASON);
        assert_eq!(refusal.session, Some(c.sid));
    }
}
