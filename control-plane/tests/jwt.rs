//! Server-side validation of the OIDC provider's JWT access tokens, against the real provider
//! (`ops/oidc-provider`, signed in through its own device-flow pages) and, where a test needs to
//! sign tokens with a key the validator trusts, against a small local issuer serving discovery,
//! a JWKS and userinfo.
//!
//! Every refusal is checked by the message a caller would get in the 401 body.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::oidc::{DEFAULT_AUDIENCE, DEFAULT_CLIENT_ID, OidcProvider, ProviderOptions};
use common::tokens::*;
use m87_control_plane::auth::{JwtError, JwtValidator, OidcConfig};
use std::sync::atomic::Ordering;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// Helpers: tokens, keys, a local issuer.

fn config(issuer: &str) -> OidcConfig {
    OidcConfig::new(issuer, DEFAULT_AUDIENCE, DEFAULT_CLIENT_ID)
}

/// What the validator answers, as the message a caller would read.
async fn refusal(validator: &JwtValidator, token: &str) -> String {
    match validator.validate(token).await {
        Ok(claims) => panic!("the token was accepted: {claims:?}"),
        Err(e) => e.to_string(),
    }
}

/// A local issuer that knows one key of ours, and a validator that trusts it.
async fn local_setup() -> (LocalIssuer, TestKey, JwtValidator) {
    let key = generate_rsa_key("local-key-1");
    let issuer = LocalIssuer::start(&[&key]).await;
    let validator = JwtValidator::new(config(&issuer.url)).await.unwrap();
    (issuer, key, validator)
}

// ---------------------------------------------------------------------------------------------
// The real provider: what works.

#[tokio::test]
async fn a_token_from_the_device_flow_validates_and_yields_the_email() {
    let provider = OidcProvider::start().await;
    let validator = JwtValidator::new(config(provider.issuer())).await.unwrap();

    let tokens = provider.sign_in("alice@example.com").await;
    let claims = validator.validate(&tokens.access_token).await.unwrap();

    assert_eq!(claims.email.as_str(), "alice@example.com");
    assert!(claims.email_verified);
    assert!(!claims.email_from_userinfo, "the email is in the token");
    assert_eq!(claims.sub, "alice@example.com");
    assert_eq!(claims.issuer, provider.issuer());
    assert_eq!(claims.client_id.as_deref(), Some(DEFAULT_CLIENT_ID));
    assert!(claims.scopes.iter().any(|s| s == "offline_access"));
    assert!(claims.exp > now() && claims.exp <= now() + 61);
    let published: Vec<String> = provider.jwks().await["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    assert!(published.contains(claims.kid.as_ref().unwrap()));

    // The ID token is for the CLI, not for the API: presenting it instead is refused.
    let id_token = tokens.id_token.expect("an ID token");
    assert_eq!(refusal(&validator, &id_token).await, "wrong audience");

    // A refreshed access token (the refresh token rotates) validates the same way.
    let refresh_token = tokens
        .refresh_token
        .expect("a refresh token for the device flow");
    let refreshed = provider.refresh(&refresh_token).await.unwrap();
    assert_ne!(
        refreshed.refresh_token.as_deref(),
        Some(refresh_token.as_str())
    );
    let again = validator.validate(&refreshed.access_token).await.unwrap();
    assert_eq!(again.email.as_str(), "alice@example.com");
    // The used refresh token is spent.
    assert_eq!(
        provider.refresh(&refresh_token).await.unwrap_err().error,
        "invalid_grant"
    );
}

#[tokio::test]
async fn after_key_rotation_new_tokens_validate_without_a_new_validator() {
    let provider = OidcProvider::start().await;
    let validator = JwtValidator::new(config(provider.issuer())).await.unwrap();
    let before = provider.sign_in("bob@example.com").await;
    let old_kid = kid_of(&before.access_token);
    validator.validate(&before.access_token).await.unwrap();
    assert_eq!(validator.known_key_ids(), std::slice::from_ref(&old_kid));

    let new_kid = provider.rotate_keys().await;
    assert_ne!(new_kid, old_kid);

    // A new sign-in and a refresh both get tokens signed with the new key.
    let after = provider.sign_in("carol@example.com").await;
    assert_eq!(kid_of(&after.access_token), new_kid);
    let claims = validator.validate(&after.access_token).await.unwrap();
    assert_eq!(claims.email.as_str(), "carol@example.com");
    assert_eq!(claims.kid.as_deref(), Some(new_kid.as_str()));

    let refreshed = provider
        .refresh(before.refresh_token.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(kid_of(&refreshed.access_token), new_kid);
    assert_eq!(
        validator
            .validate(&refreshed.access_token)
            .await
            .unwrap()
            .email
            .as_str(),
        "bob@example.com"
    );

    // Tokens signed before the rotation stay valid until they expire.
    validator.validate(&before.access_token).await.unwrap();
    let mut known = vec![old_kid, new_kid];
    known.sort();
    assert_eq!(validator.known_key_ids(), known);
}

// ---------------------------------------------------------------------------------------------
// The negative matrix.

#[tokio::test]
async fn an_expired_token_is_refused() {
    let (issuer, key, validator) = local_setup().await;
    let long_ago = now() - 3600;
    let token = sign(
        &key,
        &with(
            good_claims(&issuer.url, "dave@example.com"),
            json!({"iat": long_ago, "exp": long_ago + 60}),
        ),
    );
    assert_eq!(refusal(&validator, &token).await, "token expired");

    // Within the leeway (30 s by default) a just-expired token still passes.
    let token = sign(
        &key,
        &with(
            good_claims(&issuer.url, "dave@example.com"),
            json!({"exp": now() - 5}),
        ),
    );
    validator.validate(&token).await.unwrap();
}

#[tokio::test]
async fn an_expired_token_from_the_provider_is_refused() {
    let provider = OidcProvider::start_with(ProviderOptions {
        access_token_ttl: Duration::from_secs(1),
        ..ProviderOptions::default()
    })
    .await;
    let mut config = config(provider.issuer());
    config.leeway = Duration::ZERO;
    let validator = JwtValidator::new(config).await.unwrap();
    let tokens = provider.sign_in("erin@example.com").await;
    let exp = peek(&tokens.access_token).1["exp"].as_u64().unwrap();
    assert!(exp <= now() + 1, "the provider honours ACCESS_TOKEN_TTL");
    // Wait until the token is past its expiry.
    while now() <= exp {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        refusal(&validator, &tokens.access_token).await,
        "token expired"
    );
}

#[tokio::test]
async fn a_token_not_yet_valid_is_refused() {
    let (issuer, key, validator) = local_setup().await;
    let token = sign(
        &key,
        &with(
            good_claims(&issuer.url, "frank@example.com"),
            json!({"nbf": now() + 600}),
        ),
    );
    assert_eq!(refusal(&validator, &token).await, "token not yet valid");

    // A clock a few seconds ahead at the provider is within the leeway.
    let token = sign(
        &key,
        &with(
            good_claims(&issuer.url, "frank@example.com"),
            json!({"nbf": now() + 10}),
        ),
    );
    validator.validate(&token).await.unwrap();
}

#[tokio::test]
async fn a_token_from_another_issuer_is_refused() {
    let (issuer, key, validator) = local_setup().await;
    let claims = good_claims(&issuer.url, "grace@example.com");
    for iss in [
        json!("https://evil.example"),
        json!(format!("{}/", issuer.url)),
        json!(["https://evil.example"]),
    ] {
        let token = sign(&key, &with(claims.clone(), json!({ "iss": iss })));
        assert_eq!(refusal(&validator, &token).await, "wrong issuer", "{iss}");
    }
    let token = sign(&key, &with(claims, json!({"iss": null})));
    assert_eq!(refusal(&validator, &token).await, "wrong issuer", "no iss");
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused() {
    let provider = OidcProvider::start().await;
    let mut other_api = config(provider.issuer());
    other_api.audience = "https://other.test/api".into();
    let validator = JwtValidator::new(other_api).await.unwrap();
    let tokens = provider.sign_in("heidi@example.com").await;
    assert_eq!(
        refusal(&validator, &tokens.access_token).await,
        "wrong audience"
    );

    let (issuer, key, validator) = local_setup().await;
    let claims = good_claims(&issuer.url, "heidi@example.com");
    for aud in [
        json!("https://other.test/api"),
        json!(["a", "b"]),
        json!([]),
    ] {
        let token = sign(&key, &with(claims.clone(), json!({ "aud": aud })));
        assert_eq!(refusal(&validator, &token).await, "wrong audience", "{aud}");
    }
    let token = sign(&key, &with(claims.clone(), json!({"aud": null})));
    assert_eq!(
        refusal(&validator, &token).await,
        "wrong audience",
        "no aud"
    );
    // One of several audiences being ours is fine.
    let token = sign(
        &key,
        &with(
            claims,
            json!({"aud": ["https://other.test/api", DEFAULT_AUDIENCE]}),
        ),
    );
    validator.validate(&token).await.unwrap();
}

#[tokio::test]
async fn a_token_with_a_bad_signature_is_refused() {
    let provider = OidcProvider::start().await;
    let validator = JwtValidator::new(config(provider.issuer())).await.unwrap();
    let token = provider.sign_in("ivan@example.com").await.access_token;
    validator.validate(&token).await.unwrap();

    // Flip bytes in the middle of the signature.
    let (message, signature) = token.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(signature).unwrap();
    let middle = sig.len() / 2;
    sig[middle] ^= 0xff;
    sig[middle + 1] ^= 0x01;
    let flipped = format!("{message}.{}", b64(&sig));
    assert_eq!(refusal(&validator, &flipped).await, "bad signature");

    // Change who the token is for, keeping the provider's signature.
    let (header, claims) = peek(&token);
    let forged_claims = with(
        claims,
        json!({"email": "mallory@example.com", "sub": "mallory@example.com"}),
    );
    let forged = format!(
        "{}.{}.{signature}",
        json_b64(&header),
        json_b64(&forged_claims)
    );
    assert_eq!(refusal(&validator, &forged).await, "bad signature");

    // No signature at all.
    assert_eq!(
        refusal(&validator, &format!("{message}.")).await,
        "bad signature"
    );
}

#[tokio::test]
async fn a_token_with_alg_none_is_refused() {
    let provider = OidcProvider::start().await;
    let validator = JwtValidator::new(config(provider.issuer())).await.unwrap();
    let real = provider.sign_in("judy@example.com").await.access_token;
    let (header, claims) = peek(&real);
    for alg in ["none", "None", "NONE", "nOnE"] {
        let none_header = with(header.clone(), json!({ "alg": alg }));
        for signature in ["", "e30"] {
            let token = format!(
                "{}.{}.{signature}",
                json_b64(&none_header),
                json_b64(&claims)
            );
            assert_eq!(
                refusal(&validator, &token).await,
                "algorithm not allowed",
                "alg {alg}, signature {signature:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_token_hmac_signed_with_the_providers_public_key_is_refused() {
    let provider = OidcProvider::start().await;
    let validator = JwtValidator::new(config(provider.issuer())).await.unwrap();
    let real = provider.sign_in("ken@example.com").await.access_token;
    let (header, claims) = peek(&real);
    let jwks = provider.jwks().await;
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .unwrap()
        .clone();
    for (encoding, secret) in public_key_encodings(&jwk) {
        for alg in ["HS256", "HS384", "HS512"] {
            let forged_header = json!({"alg": alg, "typ": "JWT", "kid": header["kid"]});
            let token = sign_hmac(alg, &secret, &forged_header, &claims);
            assert_eq!(
                refusal(&validator, &token).await,
                "algorithm not allowed",
                "{alg} with the public key as {encoding}"
            );
        }
    }
}

#[tokio::test]
async fn a_token_signed_by_a_key_not_in_the_jwks_is_refused() {
    let provider = OidcProvider::start().await;
    let validator = JwtValidator::new(config(provider.issuer())).await.unwrap();
    let real = provider.sign_in("leo@example.com").await.access_token;
    let (header, claims) = peek(&real);
    let ours = generate_rsa_key("attacker-key");

    // Our own key id: the provider does not publish it, even after a refetch.
    let token = sign(&ours, &claims);
    assert_eq!(refusal(&validator, &token).await, "unknown signing key");

    // The provider's key id, our key: the signature does not verify.
    let token = sign_rsa(
        &ours,
        &json!({"alg": "RS256", "typ": "at+jwt", "kid": header["kid"]}),
        &claims,
    );
    assert_eq!(refusal(&validator, &token).await, "bad signature");

    // No key id: the provider's only key is tried, and does not verify it.
    let token = sign_rsa(&ours, &json!({"alg": "RS256"}), &claims);
    assert_eq!(refusal(&validator, &token).await, "bad signature");
}

#[tokio::test]
async fn a_malformed_token_is_refused() {
    let (issuer, key, validator) = local_setup().await;
    let header = json_b64(&json!({"alg": "RS256", "kid": key.kid}));
    let claims = json_b64(&good_claims(&issuer.url, "mike@example.com"));
    let cases = [
        String::new(),
        "not a token".into(),
        "Bearer abc".into(),
        "a.b".into(),
        "a.b.c".into(),
        "a.b.c.d.e".into(),
        format!("{header}.{claims}.sig.extra"),
        format!("{header}.!!!.sig"),
        format!("{header}.{}.sig", b64(b"not json")),
        format!("{}.{claims}.sig", b64(b"not json")),
        format!("{}.{claims}.sig", json_b64(&json!({"kid": key.kid}))),
        format!("{header}=.{claims}.sig"),
        "x".repeat(20_000),
    ];
    for token in &cases {
        assert_eq!(
            refusal(&validator, token).await,
            "malformed token",
            "{token:.80}"
        );
    }
    // Validly signed, but without the claims every access token has.
    let good = good_claims(&issuer.url, "mike@example.com");
    for missing in ["exp", "sub"] {
        let token = sign(&key, &with(good.clone(), json!({ missing: null })));
        assert_eq!(
            refusal(&validator, &token).await,
            "malformed token",
            "no {missing}"
        );
    }
    let token = sign(&key, &with(good, json!({"exp": "tomorrow"})));
    assert_eq!(refusal(&validator, &token).await, "malformed token");
}

#[tokio::test]
async fn a_token_whose_email_is_not_verified_is_refused() {
    let (issuer, key, validator) = local_setup().await;
    let claims = good_claims(&issuer.url, "nina@example.com");
    for verified in [json!(false), json!("false")] {
        let token = sign(
            &key,
            &with(claims.clone(), json!({ "email_verified": verified })),
        );
        assert_eq!(refusal(&validator, &token).await, "email not verified");
    }
    // Without email_verified in the token, and userinfo off, nothing vouches for the email.
    let mut no_userinfo = config(&issuer.url);
    no_userinfo.userinfo_fallback = false;
    let strict = JwtValidator::new(no_userinfo).await.unwrap();
    let token = sign(&key, &with(claims.clone(), json!({"email_verified": null})));
    assert_eq!(refusal(&strict, &token).await, "email not verified");
    let token = sign(
        &key,
        &with(claims, json!({"email": null, "email_verified": null})),
    );
    assert_eq!(refusal(&strict, &token).await, "token carries no email");
    // Userinfo says it is not verified either.
    *issuer.userinfo.lock().unwrap() = Some(json!({
        "sub": "user-nina@example.com", "email": "nina@example.com", "email_verified": false,
    }));
    assert_eq!(refusal(&validator, &token).await, "email not verified");
}

#[tokio::test]
async fn a_token_without_email_is_completed_from_userinfo() {
    let (issuer, key, validator) = local_setup().await;
    let claims = with(
        good_claims(&issuer.url, "olga@example.com"),
        json!({"email": null, "email_verified": null}),
    );
    let token = sign(&key, &claims);

    // Userinfo refuses the token: no email.
    assert_eq!(refusal(&validator, &token).await, "token carries no email");

    *issuer.userinfo.lock().unwrap() = Some(json!({
        "sub": "user-olga@example.com", "email": "Olga@Example.com", "email_verified": true,
    }));
    let hits = issuer.userinfo_hits.load(Ordering::SeqCst);
    let verified = validator.validate(&token).await.unwrap();
    assert_eq!(verified.email.as_str(), "olga@example.com");
    assert!(verified.email_from_userinfo);
    // Cached per subject: a second token of the same user asks userinfo no more.
    validator.validate(&token).await.unwrap();
    assert_eq!(issuer.userinfo_hits.load(Ordering::SeqCst), hits + 1);

    // Userinfo answering for someone else is not believed.
    let other = sign(&key, &with(claims, json!({"sub": "user-someone-else"})));
    assert_eq!(refusal(&validator, &other).await, "token carries no email");
}

#[tokio::test]
async fn an_algorithm_that_does_not_fit_the_key_is_refused() {
    let (issuer, key, validator) = local_setup().await;
    let claims = good_claims(&issuer.url, "pat@example.com");
    // The key is published for RS256; RS512 with the same key is refused.
    let token = sign_rsa(&key, &json!({"alg": "RS512", "kid": key.kid}), &claims);
    assert_eq!(refusal(&validator, &token).await, "algorithm not allowed");
    // An EC algorithm naming an RSA key.
    let header = json!({"alg": "ES256", "kid": key.kid});
    let token = format!(
        "{}.{}.{}",
        json_b64(&header),
        json_b64(&claims),
        b64(&[7; 64])
    );
    assert_eq!(refusal(&validator, &token).await, "algorithm not allowed");
}

#[tokio::test]
async fn unknown_key_ids_refetch_the_jwks_at_most_once_per_interval() {
    let (issuer, key, _) = local_setup().await;
    let mut slow = config(&issuer.url);
    slow.jwks_refetch_interval = Duration::from_secs(600);
    let validator = JwtValidator::new(slow).await.unwrap();
    let hits = issuer.jwks_hits();
    let claims = good_claims(&issuer.url, "quinn@example.com");

    // A garbage kid triggers one refetch; the next ones within the interval do not.
    let stranger = generate_rsa_key("stranger");
    for n in 0..5 {
        let header = json!({"alg": "RS256", "kid": format!("stranger-{n}")});
        let token = sign_rsa(&stranger, &header, &claims);
        assert_eq!(refusal(&validator, &token).await, "unknown signing key");
    }
    assert_eq!(issuer.jwks_hits(), hits + 1);
    validator.validate(&sign(&key, &claims)).await.unwrap();
    assert_eq!(issuer.jwks_hits(), hits + 1, "a known kid needs no fetch");

    // With no minimum interval, a newly published key is picked up on first sight.
    let mut eager = config(&issuer.url);
    eager.jwks_refetch_interval = Duration::ZERO;
    let validator = JwtValidator::new(eager).await.unwrap();
    let next = generate_rsa_key("local-key-2");
    let token = sign(&next, &claims);
    assert_eq!(refusal(&validator, &token).await, "unknown signing key");
    issuer.publish(&next);
    let verified = validator.validate(&token).await.unwrap();
    assert_eq!(verified.kid.as_deref(), Some("local-key-2"));
}

#[tokio::test]
async fn a_provider_that_cannot_be_reached_or_names_another_issuer_is_a_server_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = JwtValidator::new(config(&closed)).await.unwrap_err();
    assert!(matches!(err, JwtError::Provider(_)), "{err}");
    assert!(err.is_server_side());

    let (issuer, _, _) = local_setup().await;
    // The local issuer's metadata names http://127.0.0.1:PORT; "localhost" is another issuer.
    let renamed = issuer.url.replace("127.0.0.1", "localhost");
    let err = JwtValidator::new(config(&renamed)).await.unwrap_err();
    assert!(matches!(err, JwtError::Config(_)), "{err}");
}
