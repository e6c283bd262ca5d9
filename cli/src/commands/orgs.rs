//! `m87 org create|list|delete` and `m87 org members add|remove|list|role`.

use m87_events::api::{CreateOrgRequest, MemberRequest, MemberSummary, OrgSummary, RoleRequest};
use m87_events::{Email, OrgId, Role};
use m87_transport::http::ApiClient;

use crate::context::user_client;
use crate::output::{Output, print_json, print_table};

/// `m87 org create`.
pub async fn create(id: OrgId, name: Option<String>, output: Output) -> anyhow::Result<()> {
    let org: OrgSummary = user_client()?
        .post("/v1/orgs", &CreateOrgRequest { id, name })
        .await?;
    match output {
        Output::Json => print_json(&org),
        Output::Table => {
            println!(
                "created organization {} ({}); you are its admin",
                org.id, org.name
            );
            Ok(())
        }
    }
}

/// `m87 org list`.
pub async fn list(output: Output) -> anyhow::Result<()> {
    let orgs: Vec<OrgSummary> = user_client()?.get("/v1/orgs").await?;
    match output {
        Output::Json => print_json(&orgs),
        Output::Table if orgs.is_empty() => {
            println!("no organizations");
            Ok(())
        }
        Output::Table => {
            let rows: Vec<Vec<String>> = orgs
                .iter()
                .map(|o| {
                    vec![
                        o.id.to_string(),
                        o.name.clone(),
                        o.role
                            .map(|r| r.as_str().to_owned())
                            .unwrap_or_else(|| "-".into()),
                        o.members.to_string(),
                    ]
                })
                .collect();
            print_table(&["ID", "NAME", "YOUR ROLE", "MEMBERS"], &rows);
            Ok(())
        }
    }
}

/// `m87 org delete`.
pub async fn delete(id: OrgId) -> anyhow::Result<()> {
    user_client()?.delete(&format!("/v1/orgs/{id}")).await?;
    println!("deleted organization {id}");
    Ok(())
}

/// Adds `email` to `org` with `role`; returns what `m87 org members add` says.
pub(crate) async fn add_member(
    client: &ApiClient,
    org: &OrgId,
    email: &Email,
    role: Role,
) -> anyhow::Result<String> {
    client
        .post_no_content(
            &format!("/v1/orgs/{org}/members"),
            &MemberRequest {
                email: email.clone(),
                role,
            },
        )
        .await?;
    Ok(format!("added {email} to {org} as {}", role.as_str()))
}

/// Removes `email` from `org`; returns what `m87 org members remove` says.
pub(crate) async fn remove_member(
    client: &ApiClient,
    org: &OrgId,
    email: &Email,
) -> anyhow::Result<String> {
    client
        .delete(&format!("/v1/orgs/{org}/members/{email}"))
        .await?;
    Ok(format!("removed {email} from {org}"))
}

/// Gives `email` the `role` in `org`; returns what `m87 org members role` says.
pub(crate) async fn set_role(
    client: &ApiClient,
    org: &OrgId,
    email: &Email,
    role: Role,
) -> anyhow::Result<String> {
    client
        .put_no_content(
            &format!("/v1/orgs/{org}/members/{email}"),
            &RoleRequest { role },
        )
        .await?;
    Ok(format!("{email} is now {} in {org}", role.as_str()))
}

/// `m87 org members add`.
pub async fn add(org: OrgId, email: Email, role: Role) -> anyhow::Result<()> {
    println!("{}", add_member(&user_client()?, &org, &email, role).await?);
    Ok(())
}

/// `m87 org members remove`.
pub async fn remove(org: OrgId, email: Email) -> anyhow::Result<()> {
    println!("{}", remove_member(&user_client()?, &org, &email).await?);
    Ok(())
}

/// `m87 org members role`.
pub async fn role(org: OrgId, email: Email, role: Role) -> anyhow::Result<()> {
    println!("{}", set_role(&user_client()?, &org, &email, role).await?);
    Ok(())
}

/// `m87 org members list`.
pub async fn members(org: OrgId, output: Output) -> anyhow::Result<()> {
    let members: Vec<MemberSummary> = user_client()?
        .get(&format!("/v1/orgs/{org}/members"))
        .await?;
    match output {
        Output::Json => print_json(&members),
        Output::Table => {
            let rows: Vec<Vec<String>> = members
                .iter()
                .map(|m| vec![m.email.to_string(), m.role.as_str().to_owned()])
                .collect();
            print_table(&["EMAIL", "ROLE"], &rows);
            Ok(())
        }
    }
}
